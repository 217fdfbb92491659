"""evaluation: accuracy with its standard error and the confusions; the sampling setting the sweep chooses."""
import torch

from tinyvlm.evaluation import knee, reading_scores


def test_reading_scores():
    truth = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 1, 1, 0])
    r = reading_scores(pred, truth, ['a', 'b', 'c'])
    assert r['classification_accuracy'] == 0.5 and abs(r['classification_stderr'] - (0.25 / 8) ** 0.5) < 1e-12
    assert r['confusion_matrix'] == [[1, 1, 0], [0, 2, 0], [1, 2, 1]] and r['n_test'] == 8
    assert r['confusion_pairs'][0] == dict(true='c', predicted='b', count=2) and len(r['confusion_pairs']) == 3


def test_knee_takes_the_most_faithful_drawings_near_the_data():
    row = lambda t, fid, fd, g=1.5: dict(guidance=g, temperature=t, fidelity=fid, frechet=fd)
    rows = [row(0.6, 0.996, 0.94), row(0.8, 0.995, 0.62), row(0.9, 0.991, 0.56), row(1.0, 0.987, 0.53)]
    assert knee(rows, 0.27, 1000) == (rows[1], 0.27 * 3)  # 0.6 is too far from the data (> 3x the reconstructions')
    # within one standard error of the best fidelity (0.95: 0.007 at 1,000), the nearer to the data
    assert knee([row(0.5, 0.950, 1.3), row(0.6, 0.945, 1.2), row(0.7, 0.93, 1.1)], 1.0, 1000)[0]['temperature'] == 0.6
    assert knee([row(0.5, 0.99, 5.0), row(1.0, 0.9, 4.0)], 1.0, 1000)[0]['temperature'] == 1.0  # none near: the nearest
    # guidance is swept beside temperature: weaker guidance at the same temperature can be the one near the data
    chosen = knee([row(0.7, 0.997, 1.2, 3.0), row(0.7, 0.994, 0.7), row(0.7, 0.980, 0.5, 1.0)], 0.3, 1000)[0]
    assert (chosen['guidance'], chosen['temperature']) == (1.5, 0.7)
    # a perfect score ties the next one down: 999 of 1,000 is as good as 1,000 and nearer the data
    rows = [row(0.6, 1.0, 0.8), row(0.8, 0.999, 0.7), row(1.0, 0.998, 0.6)]
    assert knee(rows, 0.3, 1000)[0]['temperature'] == 0.8 and knee(rows, 0.3, 100)[0]['temperature'] == 1.0
