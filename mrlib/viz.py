"""Figures and the interactive viewer used by the notebooks.

Every function returns a matplotlib ``Figure`` (the notebook displays it), so the same
figure appears in Colab, in a papermill run and in the built book.

**Orientation.** Images and boxes are always passed as stored (array rows, box ``y`` in
image coordinates). fastMRI knee arrays are stored upside down relative to the
radiological view, so each chapter calls :func:`set_display_flip` with the manifest's
display flip; every image panel is then shown the radiological way up by turning its
y axis, which moves the boxes, heatmaps and markers drawn in array coordinates with it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display
from matplotlib.patches import Rectangle
from sklearn.metrics import roc_curve

Box = tuple  # (x, y, width, height, label) in image coordinates

_display = {"flip_ud": False}


def set_display_flip(flip_ud: bool) -> None:
    """Show every later image panel flipped up/down (``True``: the data are stored upside
    down, as fastMRI knee arrays; see :func:`mrlib.data.manifest.display_flip`)."""
    _display["flip_ud"] = bool(flip_ud)


def orient(ax: plt.Axes, flip_ud: bool | None = None) -> None:
    """Turn an image axis the radiological way up (after ``imshow``); ``None``: the setting."""
    if _display["flip_ud"] if flip_ud is None else flip_ud:
        ax.invert_yaxis()


def kspace_logmag(kspace: np.ndarray, floor: float = 1e-5) -> np.ndarray:
    """``log10(|k| / max|k| + floor)`` of complex k-space ``(rows, cols)``, for display."""
    mag = np.abs(kspace)
    return np.log10(mag / max(float(mag.max()), np.finfo(np.float32).tiny) + floor)


def draw_boxes(ax: plt.Axes, boxes: Sequence[Box], color: str = "#ff3b30", labels: bool = True) -> None:
    """Draw ``(x, y, width, height, label)`` boxes on an image axis."""
    for x, y, w, h, *rest in boxes:
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec=color, lw=1.2))
        if labels and rest and rest[0]:
            ax.text(x, y - 1.5, str(rest[0]), color=color, fontsize=6, va="bottom")


def image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    boxes: Sequence[Sequence[Box]] | None = None,
    ncols: int = 4,
    cmap: str = "gray",
    size: float = 2.6,
    vmax: float | None = None,
    suptitle: str | None = None,
    flip_ud: bool | None = None,
) -> plt.Figure:
    """Show 2-D images ``(h, w)`` in a grid, optionally with boxes drawn on each, turned
    the radiological way up (:func:`orient`)."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], cmap=cmap, vmin=0 if cmap == "gray" and images[i].min() >= 0 else None, vmax=vmax)
        orient(ax, flip_ud)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
        if boxes is not None and boxes[i]:
            draw_boxes(ax, boxes[i])
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def mask_figure(masks: dict[str, np.ndarray], n_rows: int) -> plt.Figure:
    """Show 1-D column masks ``(cols,)`` as the 2-D sampling patterns they make."""
    fig, axes = plt.subplots(1, len(masks), figsize=(2.6 * len(masks), 2.8), squeeze=False)
    for ax, (name, mask) in zip(axes.flat, masks.items()):
        mask = np.asarray(mask).reshape(-1)
        ax.imshow(np.broadcast_to(mask, (n_rows, mask.size)), cmap="gray", aspect="auto", interpolation="nearest")
        ax.set_title(f"{name}\n{mask.mean():.1%} of columns", fontsize=8)
        ax.set_xlabel("phase encode (column)", fontsize=7)
        ax.set_yticks([])
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def recon_figure(
    target: np.ndarray,
    recons: dict[str, np.ndarray],
    boxes: Sequence[Box] = (),
    error_scale: float | None = None,
) -> plt.Figure:
    """Target beside reconstructions ``(h, w)`` (top) and their absolute error maps (bottom)."""
    n = 1 + len(recons)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.4), squeeze=False)
    vmax = float(target.max())
    errors = {name: np.abs(img - target) for name, img in recons.items()}
    error_scale = error_scale or max(float(e.max()) for e in errors.values()) or 1.0
    axes[0, 0].imshow(target, cmap="gray", vmin=0, vmax=vmax)
    axes[0, 0].set_title("fully sampled target", fontsize=8)
    draw_boxes(axes[0, 0], boxes, labels=False)
    for j, (name, img) in enumerate(recons.items(), start=1):
        axes[0, j].imshow(img, cmap="gray", vmin=0, vmax=vmax)
        axes[0, j].set_title(name, fontsize=8)
        im = axes[1, j].imshow(errors[name], cmap="magma", vmin=0, vmax=error_scale)
        axes[1, j].set_title(f"|error|, {name}", fontsize=8)
        draw_boxes(axes[1, j], boxes, color="#30d158", labels=False)
    for ax in axes.flat:
        orient(ax)
        ax.axis("off")
    fig.colorbar(im, ax=axes[1, 1:].tolist(), shrink=0.8, label="absolute error")
    return fig


def viewer(
    render: Callable[..., plt.Figure],
    interactive: bool,
    static: Sequence[dict] = (),
    **sliders,
) -> None:
    """Show ``render(**values)`` with one ipywidgets slider per keyword, or static figures.

    Args:
        render: draws a figure for one setting, e.g. ``render(slice_num=3, acceleration=4)``.
        interactive: ``True`` in a live notebook (Colab, JupyterLab): sliders. ``False``
            in a headless run (papermill, the book): one static figure per ``static`` entry,
            since a widget has no kernel behind it once the notebook is rendered.
        static: the settings to draw when not interactive.
        sliders: for each argument of ``render``, the sequence of values it may take.
    """
    if not interactive:
        for values in static:
            fig = render(**values)
            display(fig)
            plt.close(fig)
        return

    import ipywidgets as widgets  # lazy: only a live notebook draws widgets

    controls = {
        name: widgets.SelectionSlider(options=list(options), description=name, continuous_update=False)
        for name, options in sliders.items()
    }
    out = widgets.Output()

    def update(**values):
        with out:
            out.clear_output(wait=True)
            fig = render(**values)
            display(fig)
            plt.close(fig)

    widgets.interactive_output(update, controls)
    display(widgets.VBox([widgets.HBox(list(controls.values())), out]))


def curves(history: Sequence[dict], panels: dict[str, Sequence[str]], title: str = "") -> plt.Figure:
    """Training curves: one panel per entry, each plotting the named history keys per epoch."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    epochs = [h["epoch"] for h in history]
    for ax, (name, keys) in zip(axes.flat, panels.items()):
        for key in keys:
            ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def roc_figure(labels: np.ndarray, scores: np.ndarray, auc: float, ci: Sequence[float], title: str = "") -> plt.Figure:
    """ROC curve with its AUC and interval in the legend."""
    fpr, tpr, _ = roc_curve(np.asarray(labels).astype(int), scores)
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.plot(fpr, tpr, color="#0a84ff", lw=2, label=f"AUC {auc:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def cam_figure(
    image: np.ndarray, maps: dict[str, np.ndarray], boxes: Sequence[Box] = (), title: str = "", size: float = 2.6
) -> plt.Figure:
    """The input slice ``(h, w)`` beside each heatmap ``(h, w)`` laid over it, boxes drawn."""
    n = 1 + len(maps)
    fig, axes = plt.subplots(1, n, figsize=(size * n, size + 0.3), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("input", fontsize=8)
    draw_boxes(axes[0], boxes, color="#30d158", labels=False)
    for ax, (name, heat) in zip(axes[1:], maps.items()):
        ax.imshow(image, cmap="gray")
        ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        y, x = np.unravel_index(np.argmax(heat), heat.shape)
        ax.plot(x, y, marker="+", color="white", ms=8, mew=1.5)
        ax.set_title(name, fontsize=8)
        draw_boxes(ax, boxes, color="#30d158", labels=False)
    for ax in axes:
        orient(ax)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def compare_curves(histories: dict[str, Sequence[dict]], panels: dict[str, str], log: bool = True) -> plt.Figure:
    """One panel per history key, one line per run: ``histories[label] = [{"epoch": .., key: ..}, ...]``."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.4), squeeze=False)
    for ax, (title, key) in zip(axes.flat, panels.items()):
        for label, hist in histories.items():
            points = [(h["epoch"], h[key]) for h in hist if key in h]  # epochs without validation: no point
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        if log:
            ax.set_yscale("log")
    axes.flat[-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def orientation_figure(image: np.ndarray, boxes: Sequence[Box] = (), title: str = "") -> plt.Figure:
    """One slice ``(h, w)`` with its boxes as stored (left) and as displayed (right, turned
    by the :func:`set_display_flip` setting)."""
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.6))
    shown = "flipped up/down: the radiological view" if _display["flip_ud"] else "as stored"
    for ax, flip, name in zip(axes, (False, _display["flip_ud"]), ("as stored (array row 0 at the top)",
                                                                   f"as displayed: {shown}")):
        ax.imshow(image, cmap="gray", vmin=0)
        orient(ax, flip)
        draw_boxes(ax, boxes, labels=False)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def price_figure(table, acceleration: int, reference: str = "unweighted") -> plt.Figure:
    """The price of attention: each arm's whole-image PSNR difference (x) against its
    ROI-PSNR difference (y) from ``reference``, with 95 % intervals on both axes
    (:func:`mrlib.report.price_of_attention`); points labelled with the arm and its alpha."""
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    for row in table.itertuples():
        ax.errorbar(row.d_psnr, row.d_roi_psnr,
                    xerr=[[row.d_psnr - row.psnr_low], [row.psnr_high - row.d_psnr]],
                    yerr=[[row.d_roi_psnr - row.roi_psnr_low], [row.roi_psnr_high - row.d_roi_psnr]],
                    fmt="o", ms=4, capsize=2, lw=0.9)
        ax.annotate(row.variant, (row.d_psnr, row.d_roi_psnr), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"Δ PSNR, whole image (dB) vs {reference}")
    ax.set_ylabel(f"Δ ROI-PSNR, lesion boxes (dB) vs {reference}")
    ax.set_title(f"the price of attention at {acceleration}x (95 % two-way intervals)", fontsize=9)
    fig.tight_layout()
    return fig
