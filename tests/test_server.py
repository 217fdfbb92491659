"""python sample.py --mode=serve: the API's answers, every bad request a clear 4xx with the server still
serving, two clients at once, the page in a real browser (headless Chromium); and --mode=complete on
the command line."""
import base64
import os
import re
import shutil
import threading

import pytest

from conftest import error_line, request, run_script
from make_data import drawing_url


def test_api_answers(server):
    status, info, _ = request(server, 'GET', '/api/info')
    assert status == 200 and info['classes'] == list('0123456789') and info['rows'] == 7
    status, r, _ = request(server, 'POST', '/api/classify', {'image': drawing_url()})
    assert status == 200 and len(r['probs']) == 10 and abs(sum(r['probs']) - 1) < 1e-4 and r['label'] in info['classes']
    assert r['seen'].startswith('data:image/png;base64,') and len(r['tokens']) == 49
    status, r, _ = request(server, 'POST', '/api/generate', {'label': '7', 'num_samples': 3, 'temperature': 0.8, 'guidance': 1})
    assert status == 200 and len(r['images']) == 3 and all(t.startswith('number:7, image:') for t in r['tokens'])
    for body in ({'index': 5, 'keep': 3, 'num_samples': 2}, {'image': drawing_url(), 'keep': 2, 'label': '1'}):
        status, r, _ = request(server, 'POST', '/api/complete', body)
        assert status == 200 and r['kept'].startswith('data:image/png') and len(r['completions']) == body.get('num_samples', 4)
        assert all(c['name'] in info['classes'] and 0 <= c['p'] <= 1 for c in r['completions'])
    # completing as 5: every sequence says 5, whatever the model reads in it; with no class, what it reads
    status, r, _ = request(server, 'POST', '/api/complete', {'index': 3, 'label': '5', 'num_samples': 4})
    assert r['asked'] == '5' and all(c['tokens'].startswith('number:5, image:') for c in r['completions'])
    status, r, _ = request(server, 'POST', '/api/complete', {'index': 3, 'num_samples': 4})
    assert r['asked'] is None and all(c['tokens'].endswith(f", number:{c['name']}.") for c in r['completions'])


def test_captions_both_ways(server):
    """A model that learnt captions draws a prompt, words it has never seen included, and writes the
    caption of an image it reads."""
    status, info, _ = request(server, 'GET', '/api/info')
    assert info['illustration'] and info['captioning'] and info['caption_length'] >= len(info['example_caption']) > 0
    for prompt in ('a thick slanted 7', 'zebra 7?'):
        status, r, _ = request(server, 'POST', '/api/generate', {'prompt': prompt, 'num_samples': 2})
        assert status == 200 and len(r['images']) == 2 and r['prompt'] == prompt
        assert all(t.startswith(f'caption:{prompt}, image:') and len(t) == len(prompt) + 66 for t in r['tokens'])
    status, r, _ = request(server, 'POST', '/api/classify', {'image': drawing_url()})
    assert status == 200 and isinstance(r['caption'], str) and len(r['caption']) <= info['caption_length']


@pytest.mark.parametrize('method, path, body, headers, status, message', [
    ('POST', '/api/classify', b'{not json', None, 400, 'not JSON'),
    ('POST', '/api/classify', b'[1, 2]', None, 400, 'must be a JSON object'),
    ('POST', '/api/classify', {'image': 'data:image/png;base64,' + base64.b64encode(b'not an image').decode()}, None, 400,
     'cannot read the image'),
    ('POST', '/api/classify', {'image': 'data:image/png;base64,***'}, None, 400, 'not valid base64'),
    ('POST', '/api/classify', {'image': '/etc/passwd'}, None, 400, 'image must be an image as a data URL'),
    ('POST', '/api/classify', {}, None, 400, 'image must be an image as a data URL'),
    ('POST', '/api/classify', b'x' * 10, {'Content-Type': 'application/json', 'Content-Length': str(50 << 20)}, 413,
     'the limit is'),
    ('POST', '/api/generate', {'label': 'Sneaker'}, None, 400, "unknown class 'Sneaker'"),
    ('POST', '/api/generate', {'label': '²'}, None, 400, "unknown class '²'"),
    ('POST', '/api/generate', {'label': '①'}, None, 400, "unknown class"),
    ('POST', '/api/generate', {'label': '7' * 5000}, None, 400, "unknown class"),
    ('POST', '/api/generate', {'label': 7}, None, 400, 'label must be a class name'),
    ('POST', '/api/generate', {'label': '7', 'temperature': -1}, None, 400, 'temperature must be a number at least 0'),
    ('POST', '/api/generate', {'label': '7', 'guidance': 'lots'}, None, 400, 'guidance must be a number'),
    ('POST', '/api/generate', {'label': '7', 'num_samples': 0}, None, 400, 'num_samples must be a whole number from 1'),
    ('POST', '/api/generate', {'label': '7', 'num_samples': 1000}, None, 400, 'at most 64 on the page'),
    ('POST', '/api/generate', b'[' * 100000 + b']' * 100000, None, 400, 'nested too deeply'),
    ('POST', '/api/generate', b'{"label": "7", "num_samples": ' + b'9' * 5000 + b'}', None, 400, 'not JSON'),
    ('POST', '/api/generate', {'prompt': ''}, None, 400, 'a caption cannot be empty'),
    ('POST', '/api/generate', {'prompt': 'a thick ☃'}, None, 400, "characters the model has never seen: '☃'"),
    ('POST', '/api/generate', {'prompt': 'a #7'}, None, 400, "never seen: '#'"),
    ('POST', '/api/generate', {'prompt': 'x' * 5000}, None, 400, 'a caption is at most 24 characters'),
    ('POST', '/api/generate', {'prompt': 7}, None, 400, 'prompt must be text'),
    ('POST', '/api/complete', {'index': 10 ** 9}, None, 400, 'index must be a test image number 0..9999'),
    ('POST', '/api/complete', {'index': '../../etc/passwd'}, None, 400, 'index must be a test image number'),
    ('POST', '/api/complete', {'index': 1, 'keep': 99}, None, 400, 'keep must be at most 7'),
    ('POST', '/api/complete', {'keep': 2}, None, 400, 'complete needs index'),
    ('POST', '/api/nope', {}, None, 404, 'no API /api/nope'),
    ('GET', '/etc/passwd', None, None, 404, 'no page /etc/passwd'),
    ('PUT', '/', b'', None, 405, 'PUT is not allowed here'),
    ('DELETE', '/api/info', None, None, 405, 'DELETE is not allowed here'),
    ('PATCH', '/api/generate', {}, None, 405, 'PATCH is not allowed here'),
    ('OPTIONS', '/api/generate', None, {'Origin': 'http://evil.example', 'Access-Control-Request-Method': 'POST'}, 403,
     'requests from'),
    ('FROB', '/', None, None, 501, 'Unsupported method'),
])
def test_bad_requests_get_a_clear_answer_and_the_server_keeps_serving(server, method, path, body, headers, status, message):
    got, r, _ = request(server, method, path, body, headers)
    assert got == status and message in r['error'], r
    assert request(server, 'GET', '/api/info')[0] == 200


def test_methods_and_query_strings(server):
    status, body, r = request(server, 'OPTIONS', '/api/info')
    assert status == 405 and r.getheader('Allow') == 'GET, HEAD, POST'
    status, body, r = request(server, 'HEAD', '/')
    assert status == 200 and body is None and int(r.getheader('Content-Length')) > 1000
    status, body, r = request(server, 'GET', '/?utm_source=x#top')
    assert status == 200 and b'<canvas' in body
    assert request(server, 'GET', '/api/info?x=1')[0] == 200


def test_two_clients_at_once_get_their_own_answers(server):
    answers = {}

    def ask(label):
        answers[label] = [request(server, 'POST', '/api/generate', {'label': label, 'num_samples': 2})[:2] for _ in range(3)]
    threads = [threading.Thread(target=ask, args=(d,)) for d in '38']
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for label, rs in answers.items():
        assert all(s == 200 and r['label'] == label and all(t.startswith(f'number:{label}, ') for t in r['tokens'])
                   for s, r in rs)


def browser():
    """A headless Chromium driven by selenium, or the reason there is none (a skip outside CI, a
    failure in CI, where .ci/run installs them)."""
    found = [shutil.which(n) for n in ('chromium', 'chromedriver')]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        found.append(None)
    if not all(found):
        why = 'no headless browser here (Debian chromium and chromium-driver, pip selenium)'
        if os.environ.get('CI'):
            pytest.fail(why + ': .ci/run installs them')
        pytest.skip(why)
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for arg in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run',
                '--disable-background-networking', '--disable-component-update', '--disable-sync', '--window-size=1200,1400'):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(found[1]), options=opts)


def test_page_in_a_real_browser(server, tmp_path):
    """Draw a stroke on the canvas and see one probability per class, then clear it all; ask for a
    class and see its images, the button disabled while the model works; write a caption and see it
    drawn (and one it cannot spell refused), and the drawing's caption; complete a test image as a
    class asked for, with the completion's own settings, and see what was asked and what was read."""
    driver = browser()  # first: without selenium it skips (outside CI) rather than fail on an import
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(f'http://127.0.0.1:{server}/')
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '#genclass option')) == 10)
        assert 'MNIST' in driver.find_element(By.ID, 'title').text
        pad = driver.find_element(By.ID, 'pad')
        ActionChains(driver).move_to_element_with_offset(pad, 0, -90).click_and_hold().move_by_offset(5, 60) \
            .move_by_offset(0, 60).release().perform()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '#bars .bar')) == 10)
        bars = driver.find_elements(By.CSS_SELECTOR, '#bars .bar')
        assert [b.find_element(By.CLASS_NAME, 'name').text for b in bars] == list('0123456789')
        probs = [float(b.find_element(By.CLASS_NAME, 'p').text) for b in bars]
        assert abs(sum(probs) - 1) < 0.02 and len(driver.find_elements(By.CSS_SELECTOR, '#bars .bar.top')) == 1
        assert driver.find_element(By.ID, 'seen').get_attribute('src').startswith('data:image/png')
        assert len(driver.find_element(By.ID, 'seentok').text) == 49
        assert driver.find_element(By.ID, 'capline').is_displayed()  # the model learnt captioning: it writes one
        assert driver.find_element(By.ID, 'capline').text.startswith('its caption:')
        driver.find_element(By.ID, 'clear').click()  # clear empties everything the drawing showed
        assert driver.find_elements(By.CSS_SELECTOR, '#bars .bar') == [] and driver.find_element(By.ID, 'seentok').text == ''
        assert driver.find_element(By.ID, 'seen').get_attribute('src') in (None, '')

        Select(driver.find_element(By.ID, 'genclass')).select_by_visible_text('7')
        working = driver.execute_script("$('gen').click(); return [$('gen').disabled, $('gensec').getAttribute('aria-busy'), "
                                        "$('genbusy').textContent]")
        assert working == [True, 'true', 'working…']  # the busy state, set as the request leaves
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '#gens img')) == 4)
        tokens = [t.text for t in driver.find_elements(By.CSS_SELECTOR, '#gens .tok')]
        assert len(tokens) == 4 and all(t.startswith('number:7, image:') for t in tokens)
        wait.until(lambda d: not d.find_element(By.ID, 'gen').get_property('disabled'))

        # the prompt box: a caption drawn, a caption it cannot spell refused in one line
        assert driver.find_element(By.ID, 'promptsec').is_displayed()
        driver.find_element(By.ID, 'prompt').send_keys('a thick ☃')
        driver.find_element(By.ID, 'draw').click()
        wait.until(lambda d: 'never seen' in d.find_element(By.ID, 'prompterr').text)
        driver.find_element(By.ID, 'prompt').clear()
        driver.find_element(By.ID, 'prompt').send_keys('a thick slanted 7\n')  # Enter draws
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '#drawn img')) == 4)
        assert [c.text for c in driver.find_elements(By.CSS_SELECTOR, '#drawn .caption')] == ['a thick slanted 7'] * 4
        assert all(t.text.startswith('caption:a thick slanted 7, image:')
                   for t in driver.find_elements(By.CSS_SELECTOR, '#drawn .tok'))
        assert driver.find_element(By.ID, 'prompterr').text == ''

        driver.find_element(By.ID, 'idx').clear()
        driver.find_element(By.ID, 'idx').send_keys('12')
        Select(driver.find_element(By.ID, 'compclass')).select_by_visible_text('5')
        driver.find_element(By.ID, 'comp_t').clear()
        driver.find_element(By.ID, 'comp_t').send_keys('99')  # the completion's own setting, refused by its rule
        driver.find_element(By.ID, 'comp').click()
        wait.until(lambda d: 'temperature' in d.find_element(By.ID, 'comperr').text)
        assert driver.find_element(By.ID, 'generr').text == ''  # the drawing section's settings are its own
        driver.find_element(By.ID, 'comp_t').clear()
        driver.find_element(By.ID, 'comp_t').send_keys('0.8')
        driver.find_element(By.ID, 'comp').click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '#comps img')) == 6)
        captions = [c.text for c in driver.find_elements(By.CSS_SELECTOR, '#comps .caption')]
        assert captions[:2] == ['original', 'kept'] and all(re.fullmatch(r'read \d \d\.\d\d', c) for c in captions[2:])
        assert driver.find_element(By.ID, 'compasked').text.startswith('completed as 5')
        tokens = [t.text for t in driver.find_elements(By.CSS_SELECTOR, '#comps .tok')]
        assert len(tokens) == 4 and all(t.startswith('number:5, image:') for t in tokens)
        assert driver.find_element(By.ID, 'comperr').text == ''
        shot = tmp_path / 'page.png'
        driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    finally:
        driver.quit()


def test_complete_on_the_command_line(work, server):
    p = run_script('sample.py', '--mode=complete', '--out_dir=out/serve', '--image=3,7', '--keep=4', '--num_samples=3', cwd=work)
    assert 'the model names its completions' in p.stdout and len(re.findall(r'test\[\d\] \(true \d\)', p.stdout)) == 2
    from PIL import Image
    grid = Image.open(work / 'out/serve/complete.png')
    assert grid.width > grid.height  # 2 rows of original, kept and 3 completions
    p = run_script('sample.py', '--mode=complete', '--out_dir=out/serve', '--image=3', '--labels=5', cwd=work)
    assert 'as 5' in p.stdout
    assert 'keep must be at most 7' in error_line(run_script('sample.py', '--mode=complete', '--out_dir=out/serve',
                                                             '--image=3', '--keep=8', cwd=work, check=False))
    assert 'complete needs --image' in error_line(run_script('sample.py', '--mode=complete', '--out_dir=out/serve',
                                                             cwd=work, check=False))


def test_a_port_in_use_is_one_line(work, server):
    p = run_script('sample.py', '--mode=serve', f'--port={server}', '--out_dir=out/serve', cwd=work, check=False, timeout=120)
    assert f'cannot listen on 127.0.0.1:{server}' in error_line(p)
