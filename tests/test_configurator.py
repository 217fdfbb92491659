"""configurator: config files and --key=value over a script's globals, each value's type checked."""
import pytest

from tinyvlm import Error, configurator


def settings():
    return dict(__file__='x.py', lr=1e-3, n=4, name='a', flag=False, opt=None, _private=1, CONSTANT='c')


@pytest.fixture(autouse=True)
def rules_for_these_settings(monkeypatch):
    """The made-up settings above have no rule but their type."""
    monkeypatch.setattr(configurator, 'RULES', dict(configurator.RULES, lr=None, n=None, name=None, flag=None, opt=None))


def test_configure_overrides_and_types(tmp_path):
    cfg = tmp_path / 'c.py'
    cfg.write_text("lr = 3e-4\nn = 8\n")
    g = settings()
    out = configurator.configure(g, [str(cfg), '--n=16', '--name=007', '--flag=True', '--lr=1'])
    assert (g['lr'], g['n'], g['name'], g['flag']) == (1.0, 16, '007', True)
    assert isinstance(g['lr'], float) and out['n'] == 16 and '_private' not in out and 'CONSTANT' not in out


@pytest.mark.parametrize('argv, message', [
    (['--nope=1'], "unknown config key 'nope'"),
    (['--CONSTANT=d'], "unknown config key 'CONSTANT'"),
    (['--n=abc'], 'n expects a whole number'),
    (['--flag=1'], 'flag expects True or False'),
    (['--n'], 'expected --key=value'),
    (['missing_config.py'], "config file 'missing_config.py' not found"),
])
def test_configure_errors(argv, message):
    with pytest.raises(Error, match=message):
        configurator.configure(settings(), argv)


def test_type_error_names_the_scripts_default(tmp_path):
    """A config file may change a setting before a bad --key=value: the error gives the script's default."""
    cfg = tmp_path / 'c.py'
    cfg.write_text("n = 8\n")
    with pytest.raises(Error, match=r"n expects a whole number \(default 4\), got str 'abc'"):
        configurator.configure(settings(), [str(cfg), '--n=abc'])


def test_compile_is_a_bool_or_auto():
    for value, want in (('auto', 'auto'), ('True', True), ('False', False)):
        g = dict(compile=False, __file__='train.py')
        configurator.configure(g, [f'--compile={value}'])
        assert g['compile'] == want
    with pytest.raises(Error, match=r"compile must be True, False or 'auto'"):
        configurator.configure(dict(compile=False, __file__='train.py'), ['--compile=1'])
