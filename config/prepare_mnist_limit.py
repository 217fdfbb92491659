# MNIST's sequences for config/train_mnist_limit.py, over the first command's tokenizer:
# python prepare.py config/prepare_mnist_limit.py
data_dir = 'data/mnist_limit'
augment = 16   # 10,000 iterations would see each sequence of 4 copies 5 times: more copies, less learnt by heart
