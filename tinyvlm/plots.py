"""
Plots (PNG files, with matplotlib): the sequence logo of the prepared codes, test accuracy
against training iteration, and the drawings' fidelity against their Frechet distance by temperature.
"""
import numpy as np

from tinyvlm.plumbing import atomic_write


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')  # files only, no screen
    import matplotlib.pyplot as plt
    return plt


def draw_logo(codes, labels, codec, title, path):
    """Sequence logo per class (Schneider & Stephens 1990): at each image position, the code letters
    stacked by frequency, the stack as high as the position's information content in bits. For more
    than 26 codes only the heights are drawn, laid out as the grid of positions for a conv tokenizer (raster
    order), else as a row: where each class is predictable. Up to 20 classes are drawn."""
    plt = _pyplot()
    import matplotlib.transforms as mtransforms
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import PathPatch
    from matplotlib.textpath import TextPath
    K, n = codec.codebook_size, codec.tokens_per_image
    letters = K <= 26
    shape = (codec.grid, codec.grid) if codec.grid else (1, n)
    shown = min(len(codec.classes), 20)
    cols = min(5, shown)
    rows = -(-shown // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols * max(1, n / 8) if letters else 2.5 * cols, 2.75 * rows),
                             sharey=letters, squeeze=False)
    font = FontProperties(family='DejaVu Sans Mono', weight='bold')
    colors = plt.get_cmap('tab20', max(K, 2))
    for d, ax in enumerate(axes.flat):
        if d >= shown:
            ax.axis('off')
            continue
        c = codes[labels == d]
        c = c[:, codec.lead:] if not letters else c  # the grid alone, in its shape
        freq = np.stack([np.bincount(c[:, p], minlength=K) for p in range(c.shape[1])]) / max(len(c), 1)
        bits = np.log2(K) + np.where(freq > 0, freq * np.log2(np.where(freq > 0, freq, 1)), 0).sum(1)
        ax.set_title(codec.classes[d][:24])
        if not letters:
            im = ax.imshow(bits.reshape(shape), cmap='viridis', vmin=0, vmax=np.log2(K))
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for p in range(n):
            y = 0.0
            for k in np.argsort(freq[p]):
                h = freq[p, k] * bits[p]
                if h < 0.02:
                    continue
                tp = TextPath((0, 0), codec.code_chars[k], size=1, prop=font)
                bb = tp.get_extents()
                t = (mtransforms.Affine2D().translate(-bb.x0, -bb.y0)
                     .scale(0.9 / bb.width, h / bb.height).translate(p + 0.05, y))
                ax.add_patch(PathPatch(t.transform_path(tp), color=colors(k), lw=0))
                y += h
        ax.set_xlim(0, n)
        ax.set_ylim(0, np.log2(K))
        ax.set_xticks(np.arange(n) + 0.5, [str(i) for i in range(n)])
        if d % cols == 0:
            ax.set_ylabel('bits')
    if not letters:
        fig.colorbar(im, ax=axes, label='bits')
    fig.suptitle(f'image codes per position and class ({title} train)' if letters else
                 f'information content of the code at each grid position, per class ({title} train)')
    if letters:
        fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=80))
    plt.close(fig)



def plot_accuracy(results, path, title):
    """Test accuracy (image -> class, with its standard error) at each evaluated checkpoint; of a run
    that learnt sums and no classes, the accuracy of the sums."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    it = [r['iter'] for r in results]
    read_classes = 'classification_accuracy' in results[-1]
    key, what = ('classification', 'image -> class') if read_classes else ('sum', 'two images -> sum')
    ax.errorbar(it, [r[f'{key}_accuracy'] for r in results], yerr=[r[f'{key}_stderr'] for r in results], marker='o',
                capsize=3)
    ax.set_xlabel('iteration')
    ax.set_ylabel(f'test accuracy, {what} (\u00b11 s.e.)')
    ax.set_title(f"{title}: {results[-1][f'{key}_accuracy']:.4f} at {it[-1]}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=100))
    plt.close(fig)


def plot_sweep(rows, recon_frechet, limit, chosen, path, title):
    """Each setting's drawings: fidelity against Frechet distance, a line per guidance through its
    temperatures, with the reconstructions' distance, the most evaluation.knee allows and the chosen
    setting marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.4))
    for g in sorted({r['guidance'] for r in rows}):
        line = [r for r in rows if r['guidance'] == g]
        ax.plot([r['frechet'] for r in line], [r['fidelity'] for r in line], marker='o', label=f"guidance {g:g}")
        for r in line:
            ax.annotate(f"{r['temperature']:g}", (r['frechet'], r['fidelity']), textcoords='offset points', xytext=(4, 4),
                        fontsize=8, fontweight='bold' if r is chosen else 'normal')
    ax.plot([chosen['frechet']], [chosen['fidelity']], marker='o', ms=12, mfc='none', mec='black', ls='none',
            label='chosen')
    ax.axvline(recon_frechet, color='gray', ls='--', label='reconstructions')
    ax.axvline(limit, color='gray', ls=':', label='the most allowed')
    ax.set_xlabel('Frechet distance to the validation images (reference features)')
    ax.set_ylabel('fidelity (drawings read as their class; labels: temperature)')
    ax.set_title(f"{title}: guidance {chosen['guidance']:g}, temperature {chosen['temperature']:g}", fontsize=10)
    ax.legend(loc='upper left', bbox_to_anchor=(1.02, 1), fontsize=8)  # outside: the lines fill the plot
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=100))
    plt.close(fig)
