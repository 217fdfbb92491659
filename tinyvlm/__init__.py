"""
tinyvlm's library: what the scripts at the top of the repository import, one module per idea.

    sequences.py     the sequence format: the codec (image codes <-> characters), the task table, padding
    gpt.py           the causal transformer over the sequences, and Muon, its optimizer
    quantizers.py    FSQ, residual FSQ and a learned codebook: latents <-> discrete codes
    tokenizers.py    the image tokenizers (conv grid, 1D latent tokens, MLP) over one quantizer
    datasets.py      MNIST, Fashion-MNIST and folders of class folders: loading, checksums, splits
    images.py        image files as a person sees them, moving images, PNG files and grids
    reference.py     the reference CNN that scores images, and the Frechet distance
    inference.py     drawing, reading and completing with a trained model
    evaluation.py    a training run's checkpoints scored on the test split
    prepared.py      a folder of prepared sequences, checked against its meta.json
    checkpoints.py   checkpoints: written atomically, loaded safely, with a format version
    plumbing.py      errors, files written atomically, locks, device and dtype, progress lines
    configurator.py  config files, --key=value, and the rule of every setting
    plots.py         the sequence logo and accuracy against iteration
    server.py        the web page's server and its JSON API (page.html is the page)
"""


class Error(Exception):
    """Something the user can fix, said in one line; a script's entry point prints it as 'error: ...'
    and exits with status 1, and the web server answers it with a 400."""
