# The mixed MNIST model's evaluation: every task it learnt (reading, drawing, the sums of 10,000 test
# pairs, the next digit named and drawn after 2,000 test images, 2,000 test captions drawn and written):
# python sample.py config/sample_mnist_mixed.py
out_dir = 'out/mixed'
