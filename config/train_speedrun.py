# The speedrun's model: the default one, trained for 800 iterations in one cosine (config/vqvae_speedrun.py
# says how to run it)
data_dir = 'data/speedrun'
out_dir = 'out/speedrun'
max_iters = 800
lr_decay_iters = 800
cycles = 1
eval_interval = 800   # one checkpoint: sample.py reads the test set once
label_weight = 30.0   # reading gets more of the gradient
learning_rate = 5e-3  # one short cosine: a higher start
