# The mixed MNIST model's evaluation: every task it learnt (reading, drawing, sums of 10,000 test
# pairs, the next digit drawn after each test image):
# python sample.py config/sample_mnist_mixed.py
out_dir = 'out/mixed'
