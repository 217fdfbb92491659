"""inference: reading with a second look at unsure images."""
import torch

from make_data import mnist_codec
from test_gpt import tiny_gpt
from tinyvlm.inference import read_labels
from tinyvlm.tokenizers import make_tokenizer


def test_read_labels_second_look():
    """Only images read below the threshold get the extra views; threshold 0 is one plain reading."""
    torch.manual_seed(0)
    tok = make_tokenizer(kind='conv', quantizer='fsq', hidden=16, grid=4, levels=(8, 5, 5, 5), loss='mse').eval()
    codec = mnist_codec(1000, 16, 40)
    model = tiny_gpt(vocab_size=codec.vocab_size)
    x = torch.rand(6, 1, 28, 28)
    codes = tok.encode(x)
    once = model.next_token_probs(codec.prompts('classification', 'label', codes=codes), codec.label_ids)
    assert torch.allclose(read_labels(model, codec, tok, codes, x, views=5, threshold=0.0), once)
    again = read_labels(model, codec, tok, codes, x, views=5, threshold=1.0, batch_size=4)
    assert again.shape == (6, 10) and torch.allclose(again.sum(1), torch.ones(6)) and not torch.allclose(again, once)
    # mirror: the second view is the mirror image
    flipped = tok.encode(x.flip(3))
    both = once.log() + model.next_token_probs(codec.prompts('classification', 'label', codes=flipped), codec.label_ids).log()
    two = read_labels(model, codec, tok, codes, x, views=2, threshold=1.0, mirror=True)
    assert torch.allclose(two, torch.softmax(both / 2, 1), atol=1e-5)


def test_kept_rows_keep_the_codes_of_the_whole_image():
    from tinyvlm.inference import kept_rows
    from tinyvlm.sequences import Codec
    codec = Codec(list('ab'), 'class', 512, 4 + 49, grid=7, lead=4)
    assert kept_rows(codec, 3) == 4 + 21 and kept_rows(codec, 0) == 4
    assert kept_rows(Codec(list('ab'), 'class', 1000, 16), 3) == 3  # no grid: single tokens


def test_worked_sums_look_again_at_unsure_digits():
    """A worked sum names each digit as read_labels reads an image: its first digit is the classification
    prompt's, unsure ones looked at again; views=1 is the plain reading through the cache."""
    from tinyvlm.gpt import GPT, GPTConfig
    from tinyvlm.inference import read_sums
    from tinyvlm.sequences import Codec
    torch.manual_seed(0)
    tok = make_tokenizer(kind='conv', quantizer='fsq', hidden=16, grid=4, levels=(8, 5, 5, 5), loss='mse').eval()
    codec = Codec(list('0123456789'), 'number', 1000, 16, tasks=['classification', 'worked_addition'])
    model = GPT(GPTConfig(block_size=codec.block_size, vocab_size=codec.vocab_size, n_layer=2, n_head=2, n_embd=32)).eval()
    x, x2 = torch.rand(5, 1, 28, 28), torch.rand(5, 1, 28, 28)
    a, b = tok.encode(x), tok.encode(x2)
    sums, digits = read_sums(model, codec, tok, 'worked_addition', a, b, x, x2, views=1, batch_size=2)
    first = model.next_token_probs(codec.prompts('classification', 'label', codes=a), codec.label_ids)
    assert digits[:, 0].tolist() == first.argmax(1).tolist() and sums.shape == (5, len(codec.sums))
    named = dict(labels=digits[:, 0].tolist(), labels2=digits[:, 1].tolist())
    whole = model.next_token_probs(codec.prompts('worked_addition', 'sum', codes=a, codes2=b, **named), codec.sum_ids)
    assert torch.allclose(sums, whole, atol=1e-5)  # the cache reads as the whole prompt
    _, looked = read_sums(model, codec, tok, 'worked_addition', a, b, x, x2, views=5, threshold=1.0)
    again = read_labels(model, codec, tok, a, x, views=5, threshold=1.0).argmax(1)
    assert looked[:, 0].tolist() == again.tolist()
