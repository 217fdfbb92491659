"""
The web page (page.html, beside this file) and its JSON API, served by Python's standard library over
one trained model: python sample.py --mode=serve.

    GET  /              the page
    GET  /api/info      the data set, its classes and the sampling defaults
    POST /api/test      {index} -> a test image and its class
    POST /api/classify  {image: data URL} -> the probability of each class, the image the model saw
    POST /api/generate  {label, num_samples, temperature, guidance} -> images and their token strings
    POST /api/complete  {index or image, keep, label, num_samples, ...} -> completions and their readings

A request never names a file: images come as data in the request. One request computes at a time
(the threads queue on a lock), so two browsers each get their own answer. What the client got wrong is
a 4xx with the reason in JSON.
"""
import base64
import binascii
import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from tinyvlm import Error
from tinyvlm.configurator import check
from tinyvlm.images import data_url, open_image, prepare_image
from tinyvlm.inference import complete_images, generate_images, kept_rows, kept_view, read_labels

MAX_BODY = 4 << 20  # bytes: a request's body is refused above this
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'page.html')


def image_from(request, info):
    """The image a request carries as a data URL (a drawing or an upload), prepared as image files are
    (images.prepare_image)."""
    url = request.get('image')
    if not isinstance(url, str) or not url.startswith('data:image/') or ';base64,' not in url:
        raise Error("image must be an image as a data URL ('data:image/png;base64,...')")
    try:
        raw = base64.b64decode(url.split(';base64,', 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise Error('image is not valid base64')
    return torch.from_numpy(prepare_image(open_image(io.BytesIO(raw), 'the image'), info, name='the image'))


def setting(request, key, default, kind):
    """A sampling setting of a request, checked by the command line's rule (configurator.RULES)."""
    value = request.get(key, default)
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise Error(f"{key} must be a {kind.__name__}, got {value!r}")
    check(key, value, 'sample.py')
    return value


class Page:
    """What the page asks, answered by one model: each API route is a method of the same name, taking the
    request's JSON object and returning the answer's."""

    def __init__(self, model, ck, codec, tok, info, test_images, test_labels, sampling, reading, keep, seed, checkpoint):
        self.model, self.ck, self.codec, self.tok, self.dataset = model, ck, codec, tok, info
        self.test_images, self.test_labels = test_images, test_labels
        self.sampling, self.reading, self.keep, self.seed, self.checkpoint = sampling, reading, keep, seed, checkpoint
        self.device = next(model.parameters()).device
        self.lock = threading.Lock()
        self.calls = 0

    def info(self, request):
        codec = self.codec
        return dict(title=self.dataset['title'], classes=codec.classes, key=codec.key, image_size=self.dataset['image_size'],
                    channels=self.dataset['channels'], tokens_per_image=codec.tokens_per_image, grid=codec.grid,
                    rows=codec.rows, test_images=len(self.test_images), checkpoint=self.checkpoint,
                    iteration=self.ck['iter_num'], defaults=dict(n=4, temperature=self.sampling['temperature'],
                                                                 guidance=self.sampling['guidance'], keep=self.keep))

    def index(self, request):
        i = request.get('index')
        if type(i) is not int or not 0 <= i < len(self.test_images):
            raise Error(f"index must be a test image number 0..{len(self.test_images) - 1}, got {i!r}")
        return i

    def class_of(self, request, optional=False):
        name = request.get('label', '')
        if optional and name in ('', None):
            return None
        if not isinstance(name, str):
            raise Error(f"label must be a class name, got {name!r}")
        return self.codec.label(name)

    def sampling_of(self, request):
        return dict(self.sampling, temperature=setting(request, 'temperature', self.sampling['temperature'], float),
                    guidance=setting(request, 'guidance', self.sampling['guidance'], float))

    def test(self, request):
        i = self.index(request)
        return dict(image=data_url(self.test_images[i]), label=self.codec.classes[int(self.test_labels[i])])

    def classify(self, request):
        x = image_from(request, self.dataset)[None].to(self.device)
        codes = self.tok.encode(x)
        p = read_labels(self.model, self.codec, self.tok, codes, x, **self.reading)[0].cpu()
        return dict(classes=self.codec.classes, probs=p.tolist(), label=self.codec.classes[int(p.argmax())],
                    seen=data_url(x[0]), tokens=self.codec.image_text(codes[0].tolist()))

    def generate(self, request):
        y = self.class_of(request)
        n = setting(request, 'num_samples', 4, int)
        if n > 64:
            raise Error(f"num_samples must be at most 64 on the page, got {n}")
        g = torch.Generator(self.device).manual_seed(self.seed + self.calls)
        images, codes = generate_images(self.model, self.codec, self.tok, [y] * n, g, **self.sampling_of(request))
        return dict(label=self.codec.classes[y], images=[data_url(im) for im in images],
                    tokens=[self.codec.text('generation', y, c.tolist()) for c in codes])

    def complete(self, request):
        codec = self.codec
        y = self.class_of(request, optional=True)
        n = setting(request, 'num_samples', 4, int)
        k = setting(request, 'keep', self.keep, int)
        if n > 16 or k > codec.rows:
            raise Error(f"num_samples must be at most 16 and keep at most {codec.rows}, got {n} and {k}")
        x = self.test_images[self.index(request)][None] if 'index' in request else image_from(request, self.dataset)[None]
        g = torch.Generator(self.device).manual_seed(self.seed + self.calls)
        images, codes, probs = complete_images(self.model, codec, self.tok, self.tok.encode(x.to(self.device)).cpu(),
                                               kept_rows(codec, k), y, n, g, **self.sampling_of(request))
        task = 'generation' if y is not None else 'classification'
        return dict(original=data_url(x[0]), kept=data_url(kept_view(x, codec, k)[0]),
                    completions=[dict(image=data_url(im), tokens=codec.text(task, int(p.argmax()), c.tolist()),
                                      name=codec.classes[int(p.argmax())], p=float(p.max()))
                                 for im, c, p in zip(images, codes, probs)])

    def answer(self, route, request):
        with self.lock, torch.no_grad():
            self.calls += 1
            return getattr(self, route)(request)


ROUTES = {'/api/info': 'info', '/api/test': 'test', '/api/classify': 'classify', '/api/generate': 'generate',
          '/api/complete': 'complete'}


def make_server(page, host, port):
    """An HTTP server (not yet serving) for page on host:port; port 0 takes a free one."""
    with open(PAGE, encoding='utf-8') as f:
        html = f.read()

    class Handler(BaseHTTPRequestHandler):
        def reply(self, status, body, kind='application/json'):
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header('Content-Type', kind + '; charset=utf-8')
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path in ('/', '/index.html'):
                return self.reply(200, html, 'text/html')
            if self.path == '/api/info':
                return self.reply(200, page.answer('info', {}))
            self.reply(404, dict(error=f"no page {self.path}: the page is at /"))

        def do_POST(self):
            route = ROUTES.get(self.path)
            if route is None:
                return self.reply(404, dict(error=f"no API {self.path}: expected one of {', '.join(ROUTES)}"))
            try:
                length = int(self.headers.get('Content-Length') or -1)
            except ValueError:
                length = -1
            if length < 0:
                return self.reply(411, dict(error='a request needs a Content-Length'))
            if length > MAX_BODY:
                self.close_connection = True  # the body is not read
                return self.reply(413, dict(error=f"the request is {length:,} bytes; the limit is {MAX_BODY:,}"))
            try:
                request = json.loads(self.rfile.read(length) or b'null')
            except (ValueError, UnicodeDecodeError) as e:
                return self.reply(400, dict(error=f"the request is not JSON ({e})"))
            if not isinstance(request, dict):
                return self.reply(400, dict(error='the request must be a JSON object'))
            try:
                return self.reply(200, page.answer(route, request))
            except Error as e:
                return self.reply(400, dict(error=str(e)))

        def log_message(self, fmt, *args):  # one short line per request
            print(f"{self.address_string()} {fmt % args}", flush=True)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve(page, host, port):
    """Serve the page until Ctrl-C."""
    server = make_server(page, host, port)
    shown = 'localhost' if host in ('127.0.0.1', '') else host
    print(f"serving {page.dataset['title']} ({len(page.codec.classes)} classes, {page.checkpoint}, iteration "
          f"{page.ck['iter_num']}) at http://{shown}:{server.server_address[1]}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print('stopped')
    finally:
        server.server_close()
