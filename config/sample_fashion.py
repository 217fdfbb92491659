# Fashion-MNIST's evaluation and drawing (the README's Fashion-MNIST row):
# python sample.py config/sample_fashion.py
out_dir = 'out/fashion'
# stronger guidance at a lower temperature draws clothes the reference reads as well as real ones,
# at some cost in variety (README: generation fidelity and Frechet distance against guidance 1.5, 0.9)
guidance = 3.0
temperature = 0.6
