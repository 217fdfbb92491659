# MNIST in sequences of one and of two images: class -> image, image -> class, MNIST addition
# ('image:... plus image:..., sum:12.') and next ('image:..., next:8, image:...': the class after the
# image's named, then drawn):
# python prepare.py config/prepare_mnist_mixed.py
data_dir = 'data/mixed'
shares = '1,1,2,1'   # sums take two readings and a sum: they get the largest share
