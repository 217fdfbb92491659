# The mixed MNIST model, over the sequences of
# python prepare.py config/prepare_mnist_mixed.py
# python train.py config/train_mnist_mixed.py
data_dir = 'data/mixed'
out_dir = 'out/mixed'
# one long cosine (docs/experiments.md): seven tasks, two of them of two images, are still being learnt
# where the default's cycles would restart
max_iters = 2000
lr_decay_iters = 2000
cycles = 1
eval_interval = 1000  # each checkpoint costs sample.py a reading of the test set and its sums
compile = 'auto'      # torch.compile where it pays here: timed once per machine (out/compile_auto.json)
