# The speedrun's model: half the default's width, trained for 1,000 iterations in one cosine
# (config/vqvae_speedrun.py says how to run it)
data_dir = 'data/speedrun'
out_dir = 'out/speedrun'
n_embd = 64           # a quarter of the default's FLOPs a step: more, narrower steps read as well in less time
max_iters = 1000
lr_decay_iters = 1000
cycles = 1
eval_interval = 1000  # one checkpoint: sample.py reads the test set once
label_weight = 30.0   # reading gets more of the gradient
learning_rate = 5e-3  # one short cosine: a higher start
