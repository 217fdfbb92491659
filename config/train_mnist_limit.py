# MNIST read at the limit: the default model over the default data, trained five times as long in one
# cosine, its answers weighted more (docs/experiments.md), after the first command's vqvae.py and prepare.py:
# python train.py config/train_mnist_limit.py && python sample.py --out_dir=out/limit
out_dir = 'out/limit'
label_weight = 30.0   # at the plateau of the default weight, reading gets more of the gradient
max_iters = 6000
lr_decay_iters = 6000
cycles = 1
eval_interval = 2000  # each checkpoint costs sample.py a reading of the test set
compile = 'auto'      # torch.compile where it pays here: timed once per machine (out/compile_auto.json)
tail_average = 1/6    # the plain mean of the last 1,000 iterations' weights, not the moving average
