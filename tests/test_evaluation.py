"""evaluation: accuracy with its standard error and the confusions."""
import torch

from tinyvlm.evaluation import reading_scores


def test_reading_scores():
    truth = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 1, 1, 0])
    r = reading_scores(pred, truth, ['a', 'b', 'c'])
    assert r['classification_accuracy'] == 0.5 and abs(r['classification_stderr'] - (0.25 / 8) ** 0.5) < 1e-12
    assert r['confusion_matrix'] == [[1, 1, 0], [0, 2, 0], [1, 2, 1]] and r['n_test'] == 8
    assert r['confusion_pairs'][0] == dict(true='c', predicted='b', count=2) and len(r['confusion_pairs']) == 3
