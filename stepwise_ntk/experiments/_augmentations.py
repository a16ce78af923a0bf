"""``stepwise-ntk augmentations``: how the augmentation changes the contrastive modes.

The same ``n`` images are paired under several augmentation settings (the same subset and
the same keys; only the augmentation differs), and for each the contrastive eigensystem of
the kernel on the views is computed (the linear kernel ``K = X Xᵀ`` of the ``linear``
experiment by default, or the NTK of ``--arch``). Reported (``results.json``), per setting:
the contrastive eigenvalues ``γ_j``, and which interpretable image statistics each of the
top ``d`` modes tracks on ``pool`` clean images (:func:`stepwise_ntk.predictor.mode_statistics`,
hue as a circular quantity, the classes by ``η²``), and the linear-probe accuracy of the
top-``d`` modes on ``probe_test`` clean images of the other split; between every pair of
settings, the subspace alignment of their top-``d`` mode functions on the same clean images
(:func:`stepwise_ntk.predictor.subspace_alignment`: 1 when the two settings learn the same
``d``-dimensional function space, whatever the order of the modes). Figures: the ``γ``
spectra side by side (``gammas.png``), the alignment heatmap (``alignment.png``), the
mode-statistic heatmaps (``statistics.png``) and one annotated gallery of the top modes per
setting (``modes_<name>.png``).

*Methods.* Barlow Twins learns the top-``d`` modes (the closed form above). Each loss of
``--losses`` (SimCLR, VICReg, as ``stepwise-ntk network`` trains them) has no closed form:
its kernel flow ``dF/dt = −K ∇L(F)`` is integrated (the solver's function route) from
``F0 = K R`` (``R`` seeded Gaussian, ``F0`` of rms ``init_scale``: a linear model's
``X W(0)ᵀ`` for the linear kernel) to ``T = horizon × t_d``, ``t_d`` the closed-form last
Barlow Twins step time from the same ``F0``. Its learned functions are the flow's ``d``
embedding columns on the clean images (ordered by their principal directions for the
statistics). Per setting and loss (``results.json`` ``flows``): the probe accuracy, what
the principal directions track, the eigenvalues of ``C`` at ``T`` and the alignment of the
embeddings at ``T/2`` and ``T`` (near 1: the subspace has settled). The alignment table
then runs over every (setting, loss) pair, so it holds both questions: how the settings
change one method's modes, and how alike the methods are under one setting
(``statistics_<loss>.png``: what each loss's directions track).

*Networks* (``--train-network true``, with ``--arch`` a network). Under every setting the
finite network is also trained, once per loss (Barlow Twins and ``--losses``), as
``stepwise-ntk methods`` trains it: at the network defaults of ``--arch`` (images, width,
``n``, ``α``, step from its own kernel), from the same initial parameters, on that setting's
views; ``d`` is chosen on the first setting and kept. Its held-out views (the other split,
the default pipeline, the same for every setting) give a second table, the subspace
alignment of the networks' held-out embeddings over every (setting, loss) pair
(``results.json`` ``network``, ``alignment_network.png``), with each run's alignment with its
own kernel flow and its steps.

Settings are a list (``--augmentations crop flip ...``, or ``augmentations = [...]`` in a
``--config`` file), each a preset name of :data:`PRESETS` or ``"name: field=value, ..."``
with :class:`~stepwise_ntk.data.AugmentSettings` fields, starting from no augmentation::

    augmentations = ["none", "crop", "strong: crop=resized, crop_scale=(0.2, 1.0), flip_prob=0.5"]
"""

from __future__ import annotations

import ast
import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk.data import AugmentSettings, cifar10_pairs, image_statistics, load_cifar10, normalize
from stepwise_ntk.data import downsample as _downsample
from stepwise_ntk.experiments._kernel import parse_options
from stepwise_ntk.experiments._linear import flatten_scaled, held_out_images
from stepwise_ntk.experiments._methods import METHOD_LABELS, alignment_table
from stepwise_ntk.experiments._network import LOSS_SETTINGS
from stepwise_ntk.experiments._plots import (
    plot_alignment_matrix,
    plot_gamma_spectra,
    plot_mode_gallery,
    plot_statistic_strengths,
)
from stepwise_ntk.experiments._run_dir import RunDir
from stepwise_ntk.experiments._settings import check_settings
from stepwise_ntk.kernels import ARCHITECTURES, analytic_ntk, make_architecture
from stepwise_ntk.predictor import linear_probe, mode_statistics, pair_groups, subspace_alignment
from stepwise_ntk.solver import solve
from stepwise_ntk.theory import contrastive_eigensystem, final_embeddings, mode_functions_new, step_times

__all__ = ["AugmentationsSettings", "PRESETS", "parse_augmentation", "run_augmentations"]

_OFF = AugmentSettings.identity()
# One stage at a time at the strength of the default pipeline, and the default pipeline
# itself (AugmentSettings(): their combination).
PRESETS: dict[str, AugmentSettings] = {
    "none": _OFF,
    "crop": dataclasses.replace(_OFF, crop="pad", crop_padding=4),
    "resized_crop": dataclasses.replace(_OFF, crop="resized", crop_scale=(0.2, 1.0)),
    "flip": dataclasses.replace(_OFF, flip_prob=0.5),
    "jitter": dataclasses.replace(_OFF, jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.4),
    # Hue alone at SimCLR's strength (ColorJitter(0.4, 0.4, 0.4, 0.1)); the default pipeline has none.
    "hue": dataclasses.replace(_OFF, jitter_prob=0.8, brightness=None, contrast=None, saturation=None, hue=0.1),
    "gray": dataclasses.replace(_OFF, gray_prob=0.2),
    "all": AugmentSettings(),
}
_FIELDS = tuple(f.name for f in dataclasses.fields(AugmentSettings))


def parse_augmentation(spec: str) -> tuple[str, AugmentSettings]:
    """``"crop"`` (a preset) or ``"name: field=value, ..."`` -> ``(name, AugmentSettings)``.

    Values are Python literals (``(0.2, 1.0)``, ``0.5``, ``None``) or bare words (``resized``).

    Example:
        >>> name, a = parse_augmentation("big: crop=resized, crop_scale=(0.5, 1.0)")
        >>> name, a.crop, a.crop_scale, a.flip_prob
        ('big', 'resized', (0.5, 1.0), None)
        >>> parse_augmentation("flip")[1].flip_prob
        0.5
    """
    if not isinstance(spec, str):
        raise TypeError(f"--augmentations items must be strings, got {type(spec).__name__} {spec!r}.")
    if ":" not in spec:
        name = spec.strip()
        if name not in PRESETS:
            raise ValueError(f"--augmentations: unknown preset {name!r}; use one of {', '.join(PRESETS)} "
                             f"or 'name: field=value, ...' with fields {', '.join(_FIELDS)}.")
        return name, PRESETS[name]
    name, body = (p.strip() for p in spec.split(":", 1))
    if not name:
        raise ValueError(f"--augmentations item {spec!r} has no name before ':'.")
    try:
        call = ast.parse(f"f({body})", mode="eval").body
    except SyntaxError:
        raise ValueError(f"--augmentations item {spec!r}: write 'name: field=value, ...'.") from None
    if not isinstance(call, ast.Call) or call.args:
        raise ValueError(f"--augmentations item {spec!r}: write 'name: field=value, ...'.")
    values: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg not in _FIELDS:
            raise ValueError(f"--augmentations item {spec!r}: unknown field {kw.arg!r}; fields: {', '.join(_FIELDS)}.")
        values[kw.arg] = kw.value.id if isinstance(kw.value, ast.Name) else ast.literal_eval(kw.value)
    for key in ("crop_scale", "crop_ratio"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    return name, dataclasses.replace(_OFF, **values)


@dataclasses.dataclass(frozen=True)
class AugmentationsSettings:
    """Settings of ``stepwise-ntk augmentations`` (each is a flag: ``--augmentations crop flip``)."""

    augmentations: tuple[str, ...] = dataclasses.field(
        default=("none", "crop", "flip", "jitter", "gray", "all"),
        metadata={"help": f"settings compared: presets ({', '.join(PRESETS)}) or 'name: field=value, ...'"},
    )
    n_pairs: int = dataclasses.field(default=500, metadata={"help": "images n (2n augmented views)", "min": 1})
    d: int = dataclasses.field(default=8, metadata={"help": "top modes compared and correlated", "min": 1})
    pool: int = dataclasses.field(
        default=2000, metadata={"help": "clean images the modes are compared and correlated on", "min": 2}
    )
    gallery_modes: int = dataclasses.field(default=4, metadata={"help": "modes in each modes_<name>.png", "min": 1})
    probe_test: int = dataclasses.field(
        default=2000, metadata={"help": "held-out clean images (other split) the top-d probe is scored on", "min": 1}
    )
    losses: tuple[str, ...] = dataclasses.field(
        default=("simclr", "vicreg"),
        metadata={"help": "losses whose kernel flows are compared with Barlow Twins' closed form (a bare --losses: "
                          "only Barlow Twins)", "choices": tuple(x for x in LOSS_SETTINGS if x != "barlow_twins"),
                  "may_be_empty": True},
    )
    horizon: float = dataclasses.field(
        default=3.0, metadata={"help": "the flows run to horizon × the last Barlow Twins step time", "above": 0}
    )
    init_scale: float = dataclasses.field(
        default=1e-3, metadata={"help": "rms of the flows' initial embeddings F0 = K R", "above": 0}
    )
    train_network: bool = dataclasses.field(
        default=False, metadata={"help": "also train the network of --arch under every setting and loss (at the "
                                         "network defaults of --arch)"}
    )
    max_steps: int = dataclasses.field(
        default=100_000, metadata={"help": "with --train-network: refuse network runs longer than this", "min": 1}
    )
    arch: str = dataclasses.field(
        default="linear",
        metadata={"help": "kernel: linear (K = X Xᵀ) or a registered architecture's NTK",
                  "choices": ("linear", *sorted(ARCHITECTURES))},
    )
    arch_options: str = dataclasses.field(
        default="", metadata={"help": "architecture fields as key=value,... (with --arch other than linear)"}
    )
    downsample: int = dataclasses.field(default=1, metadata={"help": "average-pool images by this factor", "min": 1})
    seed: int = dataclasses.field(default=0, metadata={"help": "PRNG seed (image subset and views)"})
    data_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "CIFAR-10 folder (else $STEPWISE_NTK_DATA)"}
    )
    split: str = dataclasses.field(default="train", metadata={"help": "CIFAR-10 split", "choices": ("train", "test")})

    def __post_init__(self):
        check_settings(self)
        names = [parse_augmentation(a)[0] for a in self.augmentations]  # bad items fail before any work
        if not names:
            raise ValueError("--augmentations needs at least one setting.")
        if len(set(names)) != len(names):
            raise ValueError(f"--augmentations names must be distinct, got {names}.")
        if len(set(self.losses)) != len(self.losses):
            raise ValueError(f"--losses must be distinct, got {' '.join(self.losses)}.")
        if self.train_network:
            if self.arch == "linear":
                raise ValueError(f"--train-network needs --arch {', '.join(sorted(ARCHITECTURES))} (a network to "
                                 "train), not linear.")
            self.network_settings()  # bad --arch-options for the network fail here
        self.kernel_fn()

    def network_settings(self, d: int | None = None):
        """The ``methods`` settings the networks train with: the defaults of ``--arch``, this seed and data."""
        from stepwise_ntk.experiments._methods import MethodsSettings

        return MethodsSettings(arch=self.arch, arch_options=self.arch_options, d=d, seed=self.seed,
                               data_dir=self.data_dir, split=self.split, max_steps=self.max_steps)

    def kernel_fn(self):
        """``(A, B) -> K(A, B)`` on normalised images: the linear kernel or the NTK of ``--arch``."""
        options = parse_options(self.arch_options)
        if self.arch == "linear":
            if options:
                raise ValueError("--arch-options needs --arch other than linear.")
            return lambda A, B: flatten_scaled(jnp.asarray(A)) @ flatten_scaled(jnp.asarray(B)).T
        if "d" in options:
            raise ValueError("--arch-options may not set 'd' (the NTK does not depend on it).")
        arch = make_architecture(self.arch, d=1, **options)
        return lambda A, B: jnp.asarray(analytic_ntk(arch, np.asarray(A), None if B is A else np.asarray(B),
                                                     dtype=np.float64))


def _label(setting: str, loss: str) -> str:
    """A (setting, loss) entry of the alignment tables: ``"crop BT"``, ``"crop SimCLR"``."""
    return f"{setting} {'BT' if loss == 'barlow_twins' else METHOD_LABELS[loss]}"


def _principal_directions(E: np.ndarray) -> np.ndarray:
    """``(m, d)`` embeddings -> their coordinates on their principal directions, by variance."""
    Ec = E - E.mean(axis=0)
    _, _, Vt = np.linalg.svd(Ec, full_matrices=False)
    return Ec @ Vt.T


def _loss_flow(s: AugmentationsSettings, loss: str, K, K_out, es, R, progress: bool) -> dict[str, Any]:
    """The kernel flow of ``loss`` from ``F0 = K R`` to ``horizon ×`` the last Barlow Twins step.

    ``K_out``: ``(m, 2n)`` kernel of the clean images (pool, then probe test images).
    """
    F0 = K @ R
    scale = s.init_scale / jnp.sqrt(jnp.mean(F0**2))
    F0, F0_out = scale * F0, scale * (K_out @ R)
    T = s.horizon * float(jnp.max(step_times(es, F0)))
    traj = solve(K, s.n_pairs, F0, jnp.array([T / 2, T]), loss=loss, loss_kwargs=LOSS_SETTINGS[loss] or None,
                 method="function", K_test=K_out, F0_test=F0_out, progress=progress)
    E_out = np.asarray(traj.test_embeddings, np.float64)
    return {"views": np.asarray(traj.embeddings, np.float64), "out": E_out[-1], "T": T,
            "eigenvalues": np.asarray(traj.eigenvalues[-1], np.float64),
            "settled": float(subspace_alignment(E_out[0], E_out[-1]))}


def _train_networks(s: AugmentationsSettings, specs, out: RunDir, progress: bool) -> dict[str, Any]:
    """Train the network once per (setting, loss); the alignment table of their held-out embeddings."""
    from stepwise_ntk.experiments._methods import train_method
    from stepwise_ntk.experiments._network import network_problem, network_views

    losses = ("barlow_twins", *s.losses)
    ms, d, runs, per_setting, problem = s.network_settings(), None, {}, {}, None
    for name, aug in specs:
        views, labels = network_views(ms, aug)
        problem = network_problem(ms, views, labels, ms.width, progress=progress)
        if d is None:  # chosen on the first setting, kept for the others
            d = problem.d
            ms = s.network_settings(d)
        per_setting[name] = {}
        for loss in losses:
            r = train_method(ms, loss, problem.arch, problem, problem.init, progress)
            runs[name, loss] = r["test_embeddings"]
            per_setting[name][loss] = {
                "steps": r["steps"], "train_seconds": r["train_seconds"], "learning_rate": r["lr"],
                "network_step_times": r["network_step_times"], "theory_step_times": r["theory_step_times"],
                "final_eigenvalues": r["network_eigenvalues"][-1],
                "test_alignment_flow": r["comparison"].test_alignment_flow,
            }
            if progress:
                print(f"  network {name} {METHOD_LABELS[loss]}: {r['steps']} steps, held-out alignment with its "
                      f"kernel flow {r['comparison'].test_alignment_flow:.3f}", flush=True)
    names = [name for name, _ in specs]
    labels = [_label(x, loss) for loss in losses for x in names]
    M = alignment_table([runs[x, loss] for loss in losses for x in names])
    plot_alignment_matrix(out.path / "alignment_network.png", M, labels,
                          title=f"{problem.arch.name} width {ms.width} (n={ms.n_pairs}, d={d}): held-out subspace "
                                f"alignment of the trained networks")
    return {"architecture": problem.arch.to_config(), "n_pairs": ms.n_pairs, "d": d,
            "n_test_views": int(problem.test_views.shape[0]), "labels": labels, "alignment": M,
            "settings": per_setting}


def run_augmentations(settings: AugmentationsSettings, out: RunDir, *, progress: bool = True) -> str:
    """Compute every setting's eigensystem; write ``results.json``, ``arrays.npz`` and figures into ``out``."""
    s = settings
    started = time.perf_counter()
    kernel = s.kernel_fn()
    specs = [parse_augmentation(a) for a in s.augmentations]
    dataset = load_cifar10(s.split, s.data_dir)
    pool_index = np.arange(min(s.pool, len(dataset)))
    pool_images = dataset.images[pool_index]
    pool = normalize(pool_images, dtype=np.float64)
    if s.downsample > 1:
        pool = np.asarray(_downsample(pool, s.downsample))
    stats = image_statistics(pool_images)
    pool_labels = dataset.labels[pool_index]
    key = jax.random.PRNGKey(s.seed)
    test_images, test_labels = held_out_images(s)

    # One R for every setting and loss: the flows of one setting start from the same F0.
    R = jax.random.normal(jax.random.fold_in(key, 1), (2 * s.n_pairs, s.d), jnp.float64)
    n_pool = pool.shape[0]
    names, gammas, modes, tables, per_setting = [], [], [], [], {}
    flow_modes: dict[str, list[np.ndarray]] = {loss: [] for loss in s.losses}
    flow_tables: dict[str, list[Any]] = {loss: [] for loss in s.losses}
    for name, aug in specs:
        t0 = time.perf_counter()
        views, labels, _ = cifar10_pairs(key, s.n_pairs, split=s.split, data_dir=s.data_dir, settings=aug,
                                    downsample=s.downsample, dtype=jnp.float64, subset_seed=s.seed)
        K = kernel(views, views)
        es = contrastive_eigensystem(K, s.n_pairs)
        g = np.asarray(es.gammas)
        n_pos = int(np.sum(g > 0))
        if n_pos < s.d:
            raise ValueError(f"setting {name!r} has only {n_pos} positive contrastive eigenvalues for d={s.d}; "
                             f"lower --d or raise --n-pairs.")
        K_pool, K_test = kernel(pool, views), kernel(test_images, views)
        G = np.asarray(mode_functions_new(es, K_pool, s.d))
        view_labels = np.concatenate([labels, labels])
        probe = linear_probe(np.asarray(final_embeddings(es, None, s.d)), view_labels,
                             np.asarray(final_embeddings(es, K_test, s.d)), test_labels,
                             groups=pair_groups(s.n_pairs), seed=s.seed)
        table = mode_statistics(G, stats, labels=pool_labels)
        flows = {}
        K_out = jnp.concatenate([K_pool, K_test]) if s.losses else None
        for loss in s.losses:
            t1 = time.perf_counter()
            f = _loss_flow(s, loss, K, K_out, es, R, progress)
            f_probe = linear_probe(f["views"], view_labels, f["out"][n_pool:], test_labels,
                                   groups=pair_groups(s.n_pairs), seed=s.seed)
            f_table = mode_statistics(_principal_directions(f["out"][:n_pool]), stats, labels=pool_labels)
            flow_modes[loss].append(f["out"][:n_pool])
            flow_tables[loss].append(f_table)
            flows[loss] = {"time": f["T"], "final_eigenvalues": f["eigenvalues"], "settled_alignment": f["settled"],
                           "probe_accuracy": f_probe.accuracy, "mode_statistics": f_table.table(),
                           "seconds": time.perf_counter() - t1}
        names.append(name)
        gammas.append(g)
        modes.append(G)
        tables.append(table)
        rows = table.table()
        per_setting[name] = {
            "augment": dataclasses.asdict(aug),
            "gammas": g[: max(32, s.d + 4)],
            "gap_ratio_d": float(g[s.d - 1] / g[s.d]) if g[s.d] > 0 else None,
            "mode_statistics": rows,
            "probe_accuracy": probe.accuracy,
            "flows": flows,
            "seconds": time.perf_counter() - t0,
        }
        k = min(s.gallery_modes, s.d)
        notes = [f"{r['strongest']} {r['strength']:.2f}\nclass η²={r['class_eta2']:.2f}" for r in rows[:k]]
        plot_mode_gallery(out.path / f"modes_{name}.png", pool_images, G[:, :k], annotations=notes,
                          class_names=dataset.class_names, labels=pool_labels,
                          title=f"{name}: top modes, highest values (left), lowest (right)")
        if progress:
            print(f"  {name}: γ_1 = {g[0]:.4g}, top-{s.d} probe {probe.accuracy:.3f}, "
                  f"mode 1 tracks {rows[0]['strongest']} ({rows[0]['strength']:.2f})"
                  + "".join(f"; {METHOD_LABELS[x]} probe {f['probe_accuracy']:.3f}" for x, f in flows.items())
                  + f" [{per_setting[name]['seconds']:.1f} s]", flush=True)

    # Every (setting, loss) pair: Barlow Twins' closed-form modes first, then each flow's.
    entries = modes + [E for loss in s.losses for E in flow_modes[loss]]
    labels = names if not s.losses else [_label(x, loss) for loss in ("barlow_twins", *s.losses) for x in names]
    A = alignment_table(entries)
    k = len(names)
    for j, loss in enumerate(s.losses, start=1):
        for i, name in enumerate(names):
            per_setting[name]["flows"][loss]["alignment_with_barlow_twins"] = float(A[i, j * k + i])
    kernel_name = "linear kernel" if s.arch == "linear" else f"{s.arch} NTK"
    plot_gamma_spectra(out.path / "gammas.png", names, gammas,
                       title=f"contrastive eigenvalues, {kernel_name}, CIFAR-10 n={s.n_pairs}")
    plot_alignment_matrix(out.path / "alignment.png", A, labels,
                          title=f"subspace alignment of the top-{s.d} modes on {pool.shape[0]} clean images"
                                + (" (BT: closed form; others: kernel flows)" if s.losses else ""))
    plot_statistic_strengths(out.path / "statistics.png", names, [t.strength for t in tables], tables[0].names,
                             eta2=[t.eta2 for t in tables],
                             title="what each setting's top modes track (|r|; hue: circular R; classes: η²)")
    for loss in s.losses:
        plot_statistic_strengths(out.path / f"statistics_{loss}.png", names,
                                 [t.strength for t in flow_tables[loss]], tables[0].names,
                                 eta2=[t.eta2 for t in flow_tables[loss]],
                                 title=f"what each setting's {METHOD_LABELS[loss]} kernel flow tracks (its principal "
                                       "directions)")
    out.save_arrays(names=np.array(names), labels=np.array(labels), gammas=np.stack(gammas), alignment=A,
                    strengths=np.stack([t.strength for t in tables]), eta2=np.stack([t.eta2 for t in tables]),
                    statistic_names=np.array(tables[0].names), pool_index=pool_index)
    results = {
        "kernel": kernel_name,
        "n_pairs": s.n_pairs,
        "d": s.d,
        "n_pool_images": int(pool.shape[0]),
        "n_probe_test_images": int(test_labels.shape[0]),
        "names": names,
        "losses": ["barlow_twins", *s.losses],
        "labels": labels,
        "alignment": A,
        "settings": per_setting,
        "strongest": {n: [r["strongest"] for r in per_setting[n]["mode_statistics"]] for n in names},
    }
    if s.train_network:
        results["network"] = _train_networks(s, specs, out, progress)
    results["wall_time_s"] = time.perf_counter() - started
    out.write_results(results)
    bt = A[:k, :k]
    off = ~np.eye(k, dtype=bool)
    lo = np.unravel_index(np.argmin(np.where(off, bt, np.inf)), bt.shape) if k > 1 else (0, 0)
    return (
        f"{k} settings; mode 1 tracks (top-{s.d} probe accuracy): "
        + ", ".join(f"{n} {per_setting[n]['mode_statistics'][0]['strongest']} ({per_setting[n]['probe_accuracy']:.3f})"
                    for n in names)
        + (f"; least aligned pair {names[lo[0]]}/{names[lo[1]]} {bt[lo]:.3f}" if k > 1 else "")
        + "".join(f"; {METHOD_LABELS[loss]} flow alignment with BT "
                  + ", ".join(f"{n} {per_setting[n]['flows'][loss]['alignment_with_barlow_twins']:.2f}" for n in names)
                  for loss in s.losses)
    )
