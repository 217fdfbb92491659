# Fashion-MNIST's evaluation and drawing:
# python sample.py config/sample_fashion.py
out_dir = 'out/fashion'
# stronger guidance at a lower temperature draws clothes the reference reads at least as well as real
# ones, at some cost in variety
guidance = 3.0
temperature = 0.6
