"""What the page's server guards against (tinyvlm/server.py): hosts it is not bound for (DNS rebinding),
other origins, bodies a hostile page can send without a preflight, bursts, idle connections, images too
large to decode; and a fuzz test: every request answered, the server alive after each. All traffic goes
to 127.0.0.1 only, bounded in count and time."""
import base64
import io
import json
import random
import socket
import threading
import time

from conftest import request
from make_data import drawing_url
from tinyvlm.server import IDLE_TIMEOUT, MAX_PIXELS


def raw(port, data, timeout=30):
    """Send bytes on a fresh connection and read until the server closes it -> everything it sent."""
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as s:
        s.sendall(data)
        out = b''
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            out += chunk
    return out


def status_of(answer):
    line = answer.split(b'\r\n', 1)[0]
    assert line.startswith(b'HTTP/1.'), answer[:200]
    return int(line.split()[1])


def test_hosts_it_is_not_bound_for_are_refused(server):
    """A page on evil.example whose name rebinds to 127.0.0.1 sends Host: evil.example: refused."""
    for host in ('evil.example', f'evil.example:{server}', f'localhost.evil.example:{server}', f'127.0.0.1:{server + 1}', ''):
        for method, path, body in (('GET', '/', None), ('GET', '/api/info', None), ('POST', '/api/generate', {'label': '7'})):
            status, r, _ = request(server, method, path, body, {'Host': host, 'Content-Type': 'application/json'})
            assert status == 403 and 'is not one this server answers to' in r['error'], (host, path)
    for host in (f'localhost:{server}', f'127.0.0.1:{server}', f'[::1]:{server}', 'localhost'):
        assert request(server, 'GET', '/', None, {'Host': host})[0] == 200, host


def test_other_origins_and_simple_bodies_are_refused(server):
    """What a hostile page can send without a CORS preflight: a foreign Origin, a text/plain body."""
    page = {'label': '7', 'num_samples': 64}
    for origin in ('http://evil.example', f'http://evil.example:{server}', 'null', f'https://localhost:{server}',
                   f'http://localhost:{server + 1}', 'http://localhost'):
        status, r, _ = request(server, 'POST', '/api/generate', page, {'Origin': origin, 'Content-Type': 'application/json'})
        assert status == 403 and 'only this server\'s own page' in r['error'], origin
    for kind in ('text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', None):
        status, r, _ = request(server, 'POST', '/api/generate', json.dumps(page).encode(),
                               {'Content-Type': kind} if kind else {})
        assert status == 415 and 'must be application/json' in r['error'], kind
    for origin in (f'http://localhost:{server}', f'http://127.0.0.1:{server}'):
        status, r, _ = request(server, 'POST', '/api/generate', {'label': '7', 'num_samples': 1},
                               {'Origin': origin, 'Content-Type': 'application/json; charset=utf-8'})
        assert status == 200 and len(r['images']) == 1


def test_a_burst_of_64_requests_is_answered(server):
    answers, start = [], threading.Barrier(64)

    def ask(i):
        start.wait()
        answers.append(request(server, 'POST', '/api/classify', {'image': drawing_url(i % 2 == 0)})[0] if i % 4 == 0 else
                       request(server, 'POST', '/api/generate', {'label': str(i % 10), 'num_samples': 1})[0] if i % 4 == 1 else
                       request(server, 'GET', '/api/info')[0])
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert answers == [200] * 64


def test_idle_and_unfinished_connections_are_let_go(server):
    idle = [socket.create_connection(('127.0.0.1', server), timeout=IDLE_TIMEOUT + 20) for _ in range(20)]
    unfinished = socket.create_connection(('127.0.0.1', server), timeout=IDLE_TIMEOUT + 20)
    unfinished.sendall(f'POST /api/generate HTTP/1.1\r\nHost: localhost:{server}\r\nContent-Type: application/json\r\n'
                       f'Content-Length: 100\r\n\r\n{{"label": '.encode())
    assert request(server, 'GET', '/api/info')[0] == 200  # the others are served meanwhile
    time.sleep(IDLE_TIMEOUT + 2)
    for s in idle:
        assert s.recv(100) == b''  # closed by the server
        s.close()
    answer = unfinished.recv(65536)
    assert status_of(answer) == 408 and b'the request stopped arriving' in answer, answer[:300]
    unfinished.close()
    assert request(server, 'GET', '/api/info')[0] == 200


def test_an_image_too_large_for_the_page_is_refused_before_decoding(server):
    """A 10000x10000 1-bit PNG is a few KB: refused by its header, while other requests are answered."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new('1', (10000, 10000)).save(buf, format='PNG')
    assert len(buf.getvalue()) < 100_000
    url = 'data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode()
    for route, body in (('classify', {'image': url}), ('complete', {'image': url, 'keep': 2})):
        status, r, _ = request(server, 'POST', f'/api/{route}', body)
        assert status == 400 and 'is 10000x10000 pixels (100 MP); the limit is 4.2 MP' in r['error'] and MAX_PIXELS < 10000 ** 2, r


def fuzz_requests(port, n, seed=1234):
    """n requests a careless or hostile client might send: random methods, paths, headers and bodies,
    valid JSON with wrong types and values, invalid bytes, broken request lines."""
    rng = random.Random(seed)
    methods = ['GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'TRACE', 'FROB', 'get', '', 'POST POST']
    paths = ['/', '/index.html', '/api/info', '/api/test', '/api/classify', '/api/generate', '/api/complete', '/api/',
             '/../../etc/passwd', '/%00', '/?' + 'x' * 3000, '//api/info', '/api/info/../info', '*', 'http://evil/', '/é',
             '/' + 'a' * 70000]
    values = [None, True, 0, -1, 1, 7, 2 ** 63, 10 ** 30, 1.5, -0.0, 1e308, 'NaN', '', '7', '²', '①', '٣', '7' * 3000,
              'Sneaker', 'data:image/png;base64,', 'data:image/png;base64,AAAA', drawing_url(), [], {}, [1, [2, [3]]],
              {'a': {'b': 1}}, '\x00', '\ud800']
    keys = ['label', 'num_samples', 'temperature', 'guidance', 'keep', 'index', 'image', 'top_k', 'x', '']
    for _ in range(n):
        method, path = rng.choice(methods), rng.choice(paths)
        kind = rng.random()
        if kind < 0.45:
            body = json.dumps({rng.choice(keys): rng.choice(values) for _ in range(rng.randint(0, 5))}).encode()
        elif kind < 0.6:
            body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        elif kind < 0.7:
            depth = rng.choice([10, 1000, 50000])
            body = (b'{"a":' * depth + b'1' + b'}' * depth) if rng.random() < 0.5 else b'[' * depth + b']' * depth
        elif kind < 0.8:
            body = json.dumps(rng.choice(values)).encode()
        else:
            body = b''
        headers = {'Host': rng.choice([f'localhost:{port}', f'127.0.0.1:{port}', 'evil.example', '', f'localhost:{port}'])}
        if rng.random() < 0.8:
            headers['Content-Type'] = rng.choice(['application/json', 'application/json; charset=utf-8', 'text/plain', '',
                                                  'APPLICATION/JSON', 'application/json;;;'])
        if rng.random() < 0.2:
            headers['Origin'] = rng.choice(['http://evil.example', 'null', f'http://localhost:{port}', 'http://[::1', ':'])
        length = len(body)
        if rng.random() < 0.1:
            length = rng.choice(['-5', 'abc', '1e3', str(10 ** 30), '0'])
        head = f'{method} {path} HTTP/1.1\r\n'.encode('utf-8', 'surrogatepass')
        if rng.random() < 0.05:
            head = rng.choice([b'\r\n', b'GET\r\n', b'GET / HTTP/9.9\r\n', b'\xff\xfe / HTTP/1.1\r\n', b'GET / HTTP/1.1 x\r\n'])
        lines = [f'{k}: {v}' for k, v in headers.items()] + [f'Content-Length: {length}']
        if rng.random() < 0.05:
            lines.append('X-Big: ' + 'y' * 70000)
        if rng.random() < 0.05:
            lines += [f'X-{i}: {i}' for i in range(150)]
        yield head + ('\r\n'.join(lines) + '\r\n\r\n').encode('utf-8', 'surrogatepass') + body


def test_fuzz_every_request_is_answered_and_the_server_lives(server):
    deadline = time.time() + 240
    sent = 0
    for data in fuzz_requests(server, 250):
        if time.time() > deadline:
            break
        answer = raw(server, data)
        if answer.startswith(b'{'):  # a request line of two words is HTTP/0.9: the answer has no status line
            assert 'error' in json.loads(answer), data[:200]
        else:
            assert answer.startswith(b'HTTP/1.') and b'Traceback' not in answer, (data[:300], answer[:300])
        assert request(server, 'GET', '/api/info')[0] == 200, data[:200]
        sent += 1
    assert sent >= 100
