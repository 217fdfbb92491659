# MNIST in sequences of text and of one or two images: class -> image, image -> class, next
# ('image:..., next:8, image:...': the class after the image's named, then drawn), captions both ways
# ('caption:a thick slanted 7, image:...' and 'image:..., caption:a thick slanted 7.', the style words
# measured on each image: tinyvlm/captions.py), and MNIST addition with its work shown
# ('image:..., number:3 plus image:..., number:9, sum:12.'):
# python prepare.py config/prepare_mnist_mixed.py
data_dir = 'data/mixed'
# generation, classification, addition (sums alone: none), next, illustration, captioning, worked_addition
shares = '1,1,0,1,2,1,2'
