# Fashion-MNIST's language model, over the sequences of
# python prepare.py config/prepare_fashion.py
# trained as two processes of one core each:
# torchrun --standalone --nproc_per_node=2 train.py config/train_fashion.py
data_dir = 'data/fashion'
out_dir = 'out/fashion'
label_weight = 30.0   # clothes are harder to tell apart than digits: reading gets more of the gradient
learning_rate = 6e-3  # reads better than the default 3e-3 at the same iterations
min_lr = 6e-4
max_iters = 4200      # at most: more reads a little better (docs/experiments.md), but time_limit comes first
lr_decay_iters = 4200
time_limit = 1040     # the pipeline within 20 minutes, sample.py's reading and drawing the rest: a slower machine
                      # trains fewer iterations, a faster one all of them
cycles = 1            # one cosine: a second, where the val reading still rose, would take the pipeline past 20 minutes
eval_interval = 2100  # each checkpoint costs sample.py a reading of the test set
compile = 'auto'      # torch.compile where it pays here: timed once per machine (out/compile_auto.json)
tail_average = 1/6    # the plain mean of the last sixth's weights, not the moving average
