"""
Train the multimodal GPT on the sequences prepare.py wrote. One process:

    python train.py                                   # the default: a small model that trains in minutes on a CPU
    python train.py config/train_mnist_vlm_seed.py    # the published setting (14M parameters)

Several processes, DistributedDataParallel (gloo on CPU, nccl on GPU), as nanoGPT:

    torchrun --standalone --nproc_per_node=2 train.py
    torchrun --nproc_per_node=8 --nnodes=2 --node_rank=0 --master_addr=IP --master_port=1234 train.py

Every batch row is one whole sequence starting at its start. At every evaluation the validation loss
and the accuracy of reading the class of val images (or, where the run learns sums and no classes,
their sums) are printed, and the model is saved as
ckpt_{iter}.pt (weights, for following accuracy over training with sample.py) and ckpt.pt (everything
needed to resume with --init_from=resume). The weights evaluated and saved are an exponential moving
average of the trained ones (ema), and over the last tail_average of training their plain mean.
With time_limit the run ends where that many seconds from the tokenizer's start run out: at the
warm-up's end the cosine is cut to the iterations that fit, so a slower machine trains less, and cut
again each tenth of the way by the pace since, shorter or longer, as a shared machine's speed drifts.
"""
import copy
import inspect
import math
import os
import statistics
import time

import torch
from torch.distributed import barrier, destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP

from tinyvlm import Error
from tinyvlm.checkpoints import load_checkpoint, save_checkpoint
from tinyvlm.configurator import configure
from tinyvlm.gpt import GPT, GPTConfig
from tinyvlm.inference import reading_probe
from tinyvlm.plumbing import autocast, compile_pays, lock_folder, pick_device, pick_dtype, start_script
from tinyvlm.prepared import check_data, data_signature, load_array, load_meta, load_split
from tinyvlm.sequences import PAD, Codec, answer_targets, free_text, length_groups, training_pairs

start_script()  # errors the user can fix end in one line

# -----------------------------------------------------------------------------
# default config values: a small model that trains in minutes on a CPU
out_dir = 'out/vlm'
data_dir = 'data/vlm'
init_from = 'scratch'          # 'scratch' or 'resume' (from out_dir/ckpt.pt)
eval_interval = 400
log_interval = 25            # iterations between log lines (a few seconds apart on a CPU)
eval_iters = 5                 # batches per loss estimate
eval_classify = 1000           # val images whose label is read at every evaluation
# model
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0                  # train and val loss stay together: nothing to regularise
bias = False
label_weight = 10.0            # loss weight of an answer's token (a class name, a sum): a label is 1 of ~52 targets
                               # of a sequence, so with 1 (plain next-token loss) reading gets little of the gradient
embed_codes = True             # image-code embeddings share structure through the codes' features (GPT.embeddings)
# optimizer: AdamW, and Muon for the blocks' matrices
muon = True                    # gpt.Muon: the same loss in fewer iterations than AdamW alone
batch_size = 128               # sequences per optimizer step, over all processes and micro-steps
gradient_accumulation_steps = 1  # micro-steps per process (to fit memory), each batch_size/(steps*processes)
learning_rate = 3e-3
max_iters = 1200               # iterations of one cycle of the learning rate
cycles = 4                     # at most this many cycles: another follows (a warm restart, SGDR) only while the val
                               # accuracy rose over a cycle's last eval_interval by more than two standard errors, so
                               # data that is still being learnt gets more iterations; 1 = exactly max_iters
time_limit = 0.0               # seconds from the tokenizer's start to training's end (vqvae.py's and prepare.py's, from
                               # data_dir/meta.json, count): a slower machine trains fewer iterations, the cosine cut to
                               # those that fit, by the warm-up's median step and an evaluation, and again each tenth
                               # of the way by the pace since; no further cycle.
                               # 0 = no limit: the same iterations on every machine
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0                # 0 disables
ema = 0.999                    # evaluate and save a moving average of the weights, decay min(ema, (1+t)/(10+t)) at
                               # iteration t as TensorFlow's ExponentialMovingAverage (Polyak & Juditsky 1992): it
                               # reads better than the last weights; 0 = the last weights
tail_average = 0.0             # over the last this fraction of max_iters, the plain mean of the weights instead, restarted
                               # there (stochastic weight averaging, Izmailov et al. 2018); in the last cycle
# learning rate: linear warm-up, then cosine decay to min_lr, in every cycle (without the warm-up after the first)
decay_lr = True
warmup_iters = 100
lr_decay_iters = 1200          # about max_iters, as in Chinchilla
min_lr = 3e-4                  # about learning_rate / 10
# system
backend = ''                   # DDP backend: '' = nccl on cuda, gloo otherwise
device = 'auto'                # 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'                 # 'auto' = bfloat16 where it is faster than float32 here (plumbing.fast_bf16), else
                               # float32; or 'float16'
compile = False                # torch.compile the model: faster steps on some CPUs, slower on others; 'auto' = where it
                               # pays for this run's steps, timed both ways once per machine and config (plumbing.compile_pays)
seed = 1337
# -----------------------------------------------------------------------------
config = configure(globals())
started = time.time()  # time_limit counts from here (and the tokenizer's and prepare.py's seconds)

# processes and devices
ddp = int(os.environ.get('RANK', -1)) != -1
if ddp:
    device = pick_device(device)
    init_process_group(backend=backend or ('nccl' if device.startswith('cuda') else 'gloo'))
    rank, local_rank, world_size = (int(os.environ[k]) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'))
    if device.startswith('cuda'):
        if int(os.environ.get('LOCAL_WORLD_SIZE', 1)) > torch.cuda.device_count():
            raise Error(f"torchrun started {os.environ['LOCAL_WORLD_SIZE']} processes here, one per GPU, but this machine "
                        f"has {torch.cuda.device_count()}: use --nproc_per_node={torch.cuda.device_count()}")
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
    else:  # share the cores between the processes on this machine
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get('LOCAL_WORLD_SIZE', 1))))
else:
    device, rank, local_rank, world_size = pick_device(device), 0, 0, 1
master = rank == 0
micro_batch = batch_size // (world_size * gradient_accumulation_steps)
if micro_batch * world_size * gradient_accumulation_steps != batch_size:
    raise Error(f"batch_size {batch_size} must divide into {world_size} processes x {gradient_accumulation_steps} "
                f"accumulation steps")
if master:  # one run per out_dir: a second train.py there is refused rather than interleaving checkpoints
    lock = lock_folder(out_dir, 'train.py')
device_type = 'cuda' if device.startswith('cuda') else device
dtype = pick_dtype(device, dtype)  # mixed precision: weights and optimizer state stay float32
ctx = autocast(device, dtype)
if device_type == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
torch.manual_seed(seed + rank)

# data: every row is one whole sequence (training_pairs), held on the device whole (a few MB), with
# a mask of the targets that are an answer, a class name or a sum (answer_targets), which weigh
# label_weight in the loss
meta = load_meta(data_dir)
codec = Codec.from_meta(meta)
data = {}
for split in ('train', 'val'):
    seqs, codes, labels, tasks = load_split(data_dir, split, meta)
    X, Y = training_pairs(seqs, codec.stoi[PAD], free_text(codec, tasks))
    data[split] = tuple(t.to(device) for t in (X, Y, answer_targets(codec, tasks, X.size(1))))
    if split == 'val':  # what reading the first val images is judged by: 'image:XXXX, number:', or their sums
        val_prompts, val_answers, val_labels = reading_probe(codec, meta['shares'], codes[:eval_classify],
                                                             labels[:eval_classify], seed, device)
batch_gen = torch.Generator(device=device)
spent = meta.get('seconds', {})  # what time_limit counts before train.py
if time_limit and None in (spent.get('tokenizer'), spent.get('prepare')):
    raise Error(f"{data_dir}/meta.json does not say how long the tokenizer and prepare.py took, which time_limit "
                f"counts: run vqvae.py and prepare.py again, or set time_limit=0")
spent = sum(spent.values()) if time_limit else 0.0


def get_batch(split, it, micro_step=0):
    """This process's micro_batch whole sequences (inputs, targets, answer mask) of a micro-step of
    iteration it (micro_step None: all batch_size of them): the iteration's sequences are drawn from
    (seed, it) alone, and each process and micro-step takes its own slice of them, so that any number
    of processes (and nodes) trains on the same batches as one, and a resumed run on the same as one
    that never stopped."""
    # ints only: the same in every process (the 0 stands where the rank was: one process draws as it always did)
    batch_gen.manual_seed(hash((seed, 0, split == 'val', it)) % 2 ** 62)
    ix = torch.randint(len(data[split][0]), (batch_size,), generator=batch_gen, device=device)
    if micro_step is not None:
        k = micro_step * world_size + rank
        ix = ix[k * micro_batch:(k + 1) * micro_batch]
    return tuple(t[ix] for t in data[split])


# model
iter_num = 0
run = f"{time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}"  # tells this run's ckpt_{iter}.pt from older ones in out_dir
if embed_codes:
    code_features = torch.from_numpy(load_array(data_dir, 'code_features.npy', meta))
model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=meta['block_size'],
                  bias=bias, vocab_size=codec.vocab_size, dropout=dropout, code_offset=codec.code_offset,
                  code_features=code_features.size(1) if embed_codes else 0)
if init_from == 'resume':
    ckpt_path = os.path.join(out_dir, 'ckpt.pt')
    checkpoint = load_checkpoint(ckpt_path, 'checkpoint to resume', 'train.py', ('model', 'optimizer', 'iter_num',
                                                                                'end_iter'))
    check_data(checkpoint, meta, ckpt_path, data_dir)
    for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size', 'code_offset', 'code_features'):
        model_args[k] = checkpoint['model_args'][k]
    print(f"resuming from {ckpt_path} at iteration {checkpoint['iter_num']}")
model = GPT(GPTConfig(**model_args))
end_iter = max_iters  # where the run ends now: a cycle later each time the reading still rises
time_cut = None       # with time_limit: the iterations and decay that fit it, chosen once, kept on resume
last_accuracy = None  # the val accuracy of the last evaluation
if init_from == 'resume':
    model.load_state_dict(checkpoint['trained'] if 'trained' in checkpoint else checkpoint['model'])  # 'model': the average
    iter_num, last_accuracy = checkpoint['iter_num'], checkpoint['val_accuracy']
    # the cycles the run chose, and the length its time_limit allowed, unless another length is asked for now
    if checkpoint['config']['max_iters'] == max_iters:
        end_iter, time_cut = checkpoint['end_iter'], checkpoint.get('time_cut')
        if time_cut:
            max_iters, lr_decay_iters, cycles = time_cut['max_iters'], time_cut['lr_decay_iters'], 1
    if master and time_limit and not time_cut:
        print("time_limit: not applied: a resumed run keeps the length its start chose")
    run = checkpoint['run']
elif embed_codes:
    model.code_features.copy_(code_features)
model.to(device)
averaging = bool(ema or tail_average)


def tail_length(iters):
    """Steps whose weights the plain mean takes, the last of a run of `iters`: at least the last one,
    however small the fraction."""
    return max(1, round(tail_average * iters)) if tail_average else 0


tail = tail_length(max_iters)
averaged = copy.deepcopy(model) if averaging else model  # what is evaluated and saved; float32 as the weights
if averaging and init_from == 'resume':
    averaged.load_state_dict(checkpoint['model'])
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
optimizers = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type, muon, dtype)
if init_from == 'resume':
    states = checkpoint['optimizer']
    if len(states) != len(optimizers):
        raise Error(f"{ckpt_path} was trained with muon={len(states) > 1}: resume with that setting")
    for opt, state in zip(optimizers, states):
        opt.load_state_dict(state)
    if master:
        torch.set_rng_state(checkpoint['rng_state'])
    checkpoint = None
raw_model = model


def forward_backward(m, batch, sync=None):
    """The gradient of one micro-batch (inputs, targets, answer mask) added to m's: its rows in groups of
    similar length, each cropped to its longest (length_groups: a mixed batch computes little padding),
    each group's mean loss weighted by its share of the batch's targets, so that they add up to the
    whole batch's. sync (DDP): whether this micro-step syncs the gradients, on its last group.
    -> the loss (a tensor)"""
    X, Y, M = batch
    W = torch.where(Y != -1, 1 + (label_weight - 1) * M.float(), 0.0)  # each target's weight in the loss
    groups = length_groups(Y)
    loss = 0.0
    for g, (rows, width) in enumerate(groups):
        if sync is not None:
            m.require_backward_grad_sync = sync and g == len(groups) - 1
        x, y, w = X[rows, :width], Y[rows, :width], W[rows, :width]
        with ctx:
            _, part = m(x, y, weights=w)
            if len(groups) > 1:
                part = part * (w.sum() / W.sum())
            part = part / gradient_accumulation_steps
        scaler.scale(part).backward()
        loss += part.detach()
    return loss


# compiled, the model is one graph, not one per DDP gradient bucket (dynamo's DDPOptimizer): the same graphs
# whether it is compiled inside DDP or outside it, as compile='auto' times it, so the same weights either way
if compile:
    torch._dynamo.config.optimize_ddp = False
compiled = None
if compile == 'auto':  # timed over batches of the validation split (never trained on), the weights untouched
    compile, times, compiled = compile_pays(model, lambda m, i: forward_backward(m, get_batch('val', -1 - i, 0)),
                                            end_iter - iter_num, dict(model_args, micro_batch=micro_batch,
                                                                      processes=world_size, dtype=dtype), device)
    if ddp:  # every process follows rank 0's measurement
        decision = torch.tensor([int(compile)], device=device)
        torch.distributed.broadcast(decision, 0)
        compile = bool(decision.item())
    if master and times['compiled'] is None:
        print(f"compile='auto': not compiling: torch.compile failed here ({times['failed']}); out/compile_auto.json")
    elif master:
        print(f"compile='auto': {'compiling' if compile else 'not compiling'} (a step {times['eager'] * 1000:.0f} ms "
              f"eager, {times['compiled'] * 1000:.0f} ms compiled, after {times['compiling']:.0f} s of compiling"
              f"{' the first time' if compiled is None else ''}; {end_iter - iter_num:,} steps to go; out/compile_auto.json)")
if compile and compiled is None:
    print("compiling the model...")
    model = torch.compile(model)
elif compile:
    model = compiled
if ddp:
    # no buffers to broadcast (code_features is the same file everywhere): a forward is then no collective,
    # so processes may run their batches as different numbers of length groups
    quiet = {'forward_sync_buffers' if 'forward_sync_buffers' in inspect.signature(DDP).parameters  # torch >= 2.13
             else 'broadcast_buffers': False}
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None, **quiet)
if master:
    os.makedirs(out_dir, exist_ok=True)
    tokens_per_iter = batch_size * data['train'][0].size(1)
    flops_per_token = raw_model.estimate_flops_per_token(data['train'][0].size(1))
    print(f"{raw_model.get_num_params():,} parameters; {world_size} process(es) on {device} ({dtype}); "
          f"{tokens_per_iter:,} tokens per iteration; {flops_per_token / 1e6:.3f} MFLOP per token")


@torch.no_grad()
def evaluate():
    """Mean loss over eval_iters fixed batches of each split, and val reading accuracy, of the averaged
    weights (the unwrapped model without averaging: only this process evaluates, so no DDP collectives)."""
    averaged.eval()
    out = {}
    for split in ('train', 'val'):
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            X, Y, _ = get_batch(split, -1 - k, None)
            with ctx:
                _, loss = averaged(X, Y)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    with ctx:
        probs = averaged.next_token_probs(val_prompts, val_answers)
    out['val_accuracy'] = (probs.argmax(1) == val_labels).float().mean().item()
    averaged.train()
    return out


def get_lr(it):
    """Linear warm-up for warmup_iters, then cosine decay to min_lr at lr_decay_iters; each further cycle
    of max_iters starts again from learning_rate without a warm-up (SGDR, Loshchilov & Hutter 2016)."""
    start = it // max_iters * max_iters
    warmup = warmup_iters if start == 0 else 0
    it -= start
    if it < warmup:
        return learning_rate * (it + 1) / (warmup + 1)
    if it >= lr_decay_iters:  # also where the warm-up is as long as the decay
        return min_lr
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * decay_ratio(it, warmup))) * (learning_rate - min_lr)


def decay_ratio(it, warmup):
    """How far down the cosine iteration `it` is: 0 at the warm-up's end, 1 at lr_decay_iters. Past a
    time_limit cut made after the warm-up, the rest of the way is spread over the iterations left from
    where the cut found it, so the learning rate never jumps."""
    if it >= lr_decay_iters:
        return 1.0
    if time_cut and 'from' in time_cut and it >= time_cut['from'][0]:
        at, ratio = time_cut['from']
        return ratio + (1 - ratio) * (it - at) / (lr_decay_iters - at)
    return (it - warmup) / (lr_decay_iters - warmup)


def fit_time_limit(step_s, eval_s=None):
    """The last iteration, up to the config's max_iters, that ends training within time_limit of the
    tokenizer's start, at step_s seconds a step and eval_s an evaluation (at every eval_interval and at
    the end; None: timed now). Rank 0 measures and every process gets its answer. -> (that iteration,
    the evaluation's seconds, a line saying why)"""
    end, left = config['max_iters'], 0.0
    if master:
        if eval_s is None:
            t = time.time()
            evaluate()
            eval_s = time.time() - t
        left = time_limit - spent - (time.time() - started)
        while end > iter_num and ((end - iter_num) * step_s + eval_s * (end // eval_interval - iter_num // eval_interval
                                                                         + (end % eval_interval > 0))) > left:
            end -= 1
    if ddp:
        decision = torch.tensor([end, eval_s or 0.0, left], dtype=torch.float64, device=device)
        torch.distributed.broadcast(decision, 0)
        end, eval_s, left = int(decision[0].item()), decision[1].item(), decision[2].item()
    why = (f"time_limit={time_limit:.0f}s: the tokenizer and prepare.py took {spent:.0f}s, train.py "
           f"{time_limit - spent - left:.0f}s so far; a step {step_s * 1000:.0f}ms, an evaluation {eval_s:.1f}s")
    return end, eval_s, why


def cut_to(end):
    """End training at `end`: the cosine decays over the same share of it as the config's did, from where
    it is now (decay_ratio), the plain mean over the same share of its end; no further cycle."""
    global max_iters, end_iter, lr_decay_iters, tail, cycles, time_cut
    decay = max(warmup_iters + 1, round(config['lr_decay_iters'] * end / config['max_iters']))
    start = (time_cut or {}).get('from')
    if decay != lr_decay_iters and iter_num > warmup_iters:  # the cosine begun: go on from where it is
        start = [iter_num, decay_ratio(iter_num, warmup_iters)]
    lr_decay_iters, max_iters, end_iter, tail, cycles = decay, end, end, tail_length(end), 1
    time_cut = dict(max_iters=end, lr_decay_iters=decay, **({'from': start} if start else {}))


def still_rising(before, now, n):
    """Whether val accuracy rose from `before` to `now` (over n images) by more than two standard errors."""
    return before is not None and now - before > 2 * math.sqrt(max(now * (1 - now), 1 / n) / n)


X, Y, M = get_batch('train', iter_num)
t0 = time.time()
t_start, iter_start = t0, iter_num
# time_limit: the steps timed, past the first few, to the warm-up's end where the cosine starts; the median
# step, as a machine's speed may dip for a while. Then, each tenth of the way, the mean step since that cut
# (evaluations apart) cuts it again, shorter or longer, until the plain mean's steps begin: a machine drifts
timed, step_ends = (iter_start + 10, iter_start + max(60, warmup_iters)), []
recheck = None  # after the first cut: when to cut again, every how many, and the iteration, clock and evaluations'
                # seconds at that first cut
eval_spent = 0.0
while True:
    at_end = iter_num == end_iter
    if master and iter_num > iter_start and (iter_num % eval_interval == 0 or at_end):
        t_eval = time.time()
        ev = evaluate()
        if not all(math.isfinite(v) for v in ev.values()):
            raise Error(f"loss is not finite at iteration {iter_num} ({ev}); the last good checkpoint is kept in "
                        f"{out_dir}: lower learning_rate or raise warmup_iters")
        elapsed = time.time() - t_start
        print(f"step {iter_num}: train loss {ev['train']:.4f}, val loss {ev['val']:.4f}, "
              f"val accuracy {ev['val_accuracy']:.4f} [{elapsed:.0f}s]", flush=True)
        if at_end and iter_num < cycles * max_iters and still_rising(last_accuracy, ev['val_accuracy'], len(val_labels)):
            end_iter += max_iters
            print(f"val accuracy still rising ({last_accuracy:.4f} -> {ev['val_accuracy']:.4f}): another cycle of "
                  f"{max_iters} iterations, to {end_iter}", flush=True)
        last_accuracy = ev['val_accuracy']
        info = dict(run=run, iter_num=iter_num, end_iter=end_iter, time_cut=time_cut, model_args=model_args,
                    data=data_signature(meta), config=config, val_loss=ev['val'], train_loss=ev['train'],
                    val_accuracy=ev['val_accuracy'])
        save_checkpoint(dict(model=averaged.state_dict(), **info), os.path.join(out_dir, f'ckpt_{iter_num}.pt'))
        trained = dict(trained=raw_model.state_dict()) if averaging else {}
        save_checkpoint(dict(model=averaged.state_dict(), **trained, optimizer=[opt.state_dict() for opt in optimizers],
                             rng_state=torch.get_rng_state(), **info),
                        os.path.join(out_dir, 'ckpt.pt'))
        eval_spent += time.time() - t_eval
    if ddp and at_end:  # every process follows rank 0's decision
        decision = torch.tensor([end_iter], device=device)
        torch.distributed.broadcast(decision, 0)
        end_iter = int(decision.item())
    if iter_num >= end_iter:
        break

    lr = get_lr(iter_num) if decay_lr else learning_rate  # after the decision: a new cycle starts at learning_rate
    for opt in optimizers:
        for param_group in opt.param_groups:
            param_group['lr'] = lr
    loss = 0.0
    for micro_step in range(gradient_accumulation_steps):
        last = micro_step == gradient_accumulation_steps - 1
        batch = X, Y, M
        X, Y, M = get_batch('train', *((iter_num + 1, 0) if last else (iter_num, micro_step + 1)))  # prefetch
        loss += forward_backward(model, batch, sync=last if ddp else None)
    if grad_clip != 0.0:
        for opt in optimizers:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for opt in optimizers:
        scaler.step(opt)
        opt.zero_grad(set_to_none=True)
    scaler.update()
    if averaging and master:
        n = iter_num + 1 - (end_iter - tail)  # weights in the plain mean, this step's included (< 1: before the tail)
        # the ramp keeps the first, random weights from lingering in the moving average
        decay = 1 - 1 / n if n >= 1 else min(ema, (1 + iter_num) / (10 + iter_num))
        with torch.no_grad():
            for a, p in zip(averaged.parameters(), raw_model.parameters()):
                a.lerp_(p, 1 - decay)

    iter_num += 1
    if iter_num % log_interval == 0 and master:
        lossf = loss.item()  # the mean over the micro-steps
        if not math.isfinite(lossf):
            raise Error(f"loss is not finite ({lossf}) at iteration {iter_num}; the last good checkpoint is kept in "
                        f"{out_dir}: lower learning_rate or raise warmup_iters")
        dt = (time.time() - t0) / log_interval
        t0 = time.time()
        print(f"iter {iter_num}: loss {lossf:.4f}, {dt * 1000:.1f} ms/iter, "
              f"{tokens_per_iter / dt:,.0f} tokens/s, lr {lr:.2e}", flush=True)
    if time_limit and init_from == 'scratch' and timed[0] <= iter_num <= timed[1]:
        if device_type == 'cuda':
            torch.cuda.synchronize()
        step_ends.append(time.time())
    if time_limit and init_from == 'scratch' and iter_num == timed[1] < end_iter:
        end, eval_s, why = fit_time_limit(statistics.median(b - a for a, b in zip(step_ends, step_ends[1:])))
        if end <= iter_num or end < 2 * warmup_iters:  # no time left, or too little for the cosine past its warm-up
            raise Error(f"{why}: no time for more than {end} iterations: raise time_limit or set it to 0")
        if master:
            print(f"{why}: {'all ' if end == end_iter else ''}{end:,} iterations fit"
                  f"{f', not {end_iter:,}: the cosine is cut to them' if end < end_iter else ''}", flush=True)
        cut_to(end)  # also where all fit: no further cycle, and a resumed run keeps the length
        every = max(1, (end - iter_num) // 10)
        recheck = dict(at=iter_num + every, every=every, iter=iter_num, time=time.time(), evals=eval_spent)
    elif recheck and iter_num == recheck['at']:
        if iter_num + recheck['every'] <= end_iter - tail:  # the plain mean's steps not begun by the next check
            step_s = (time.time() - recheck['time'] - (eval_spent - recheck['evals'])) / (iter_num - recheck['iter'])
            end, eval_s, why = fit_time_limit(step_s, eval_s)
            # the plain mean's steps still to come, however little time is left
            end = max(end, next(e for e in range(iter_num + 1, 2 * end_iter + 2) if e - tail_length(e) > iter_num))
            if end != end_iter:
                if master:
                    print(f"{why}: {end:,} iterations fit, not {end_iter:,}: the cosine is cut again", flush=True)
                cut_to(end)
            recheck['at'] += recheck['every']
        else:
            recheck = None

if ddp:  # leave together: a process that tears down gloo while rank 0 still saves can abort
    barrier()
    destroy_process_group()
