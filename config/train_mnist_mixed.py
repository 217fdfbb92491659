# The mixed MNIST model, over the sequences of
# python prepare.py config/prepare_mnist_mixed.py
# python train.py config/train_mnist_mixed.py
data_dir = 'data/mixed'
out_dir = 'out/mixed'
eval_interval = 600  # each checkpoint costs sample.py a reading of the test set and its sums
