# MNIST read at the limit: a model of half the default's width over 16 moved copies of each training image,
# trained in one long cosine, its answers weighted more (docs/experiments.md), after the first command's vqvae.py:
# python prepare.py config/prepare_mnist_limit.py && python train.py config/train_mnist_limit.py
# python sample.py config/sample_mnist_limit.py   (bench.py --pipeline=True --pipeline_config=mnist_limit times all four)
data_dir = 'data/mnist_limit'
out_dir = 'out/limit'
n_embd = 64           # a quarter of the default's FLOPs a step: more, narrower steps read as well in less time
label_weight = 30.0   # at the plateau of the default weight, reading gets more of the gradient
learning_rate = 5e-3  # the speedrun's rate for this width
min_lr = 5e-4
max_iters = 10000
lr_decay_iters = 10000
time_limit = 1680     # the pipeline within half an hour, sample.py the rest: a slower machine trains fewer iterations
cycles = 1
eval_interval = 2500  # each checkpoint costs sample.py a reading of the test set
compile = 'auto'      # torch.compile where it pays here: timed once per machine (out/compile_auto.json)
tail_average = 1/6    # the plain mean of the last sixth's weights, not the moving average
