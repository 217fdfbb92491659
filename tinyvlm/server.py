"""
The web page (page.html, beside this file) and its JSON API, served by Python's standard library over
one trained model: python sample.py --mode=serve.

    GET  /              the page (HEAD: the same without a body; a query string is ignored)
    GET  /api/info      the data set, its classes and the sampling defaults
    POST /api/test      {index} -> a test image and its class
    POST /api/classify  {image: data URL} -> the probability of each class, the image the model saw (and
                        the caption it writes, for a model that learnt captioning)
    POST /api/generate  {label or prompt, num_samples, temperature, guidance} -> images and their token
                        strings (a prompt: a caption, for a model that learnt illustration)
    POST /api/complete  {index or image, keep, label, num_samples, ...} -> completions and their readings

What it guards against, as the local servers people trust do (Jupyter, the Vite dev server): any web
page the user's browser opens can reach a local port, so only the host names the server is bound for
are answered (a DNS-rebinding page gets a 403), a request from another origin is refused, and an API
body must be application/json, which a page of another origin cannot send without a preflight this
server never grants. Every request is answered: 4xx in JSON with the reason for what the client got
wrong, 500 with a one-line reason for what the server got wrong. Images come only as data in the
request (never a file name) and are limited in bytes and pixels before they are decoded, outside the
lock that lets one request compute at a time. Idle connections are closed. It has no authentication:
bind it to localhost (the default) or put it behind a proxy that has.
"""
import base64
import binascii
import io
import ipaddress
import json
import os
import socket
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import torch

from tinyvlm import Error
from tinyvlm.configurator import check
from tinyvlm.images import data_url, open_image, prepare_image
from tinyvlm.inference import (complete_images, draw_captions, generate_images, kept_rows, kept_view, read_labels,
                               write_captions)

MAX_BODY = 4 << 20         # bytes: a request's body is refused above this
MAX_PIXELS = 2048 * 2048   # an image sent to the page: a drawing or a photo, not a scan
IDLE_TIMEOUT = 10          # seconds a connection may wait between reads before it is closed
BACKLOG = 128              # connections the operating system holds while the server is busy
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'page.html')
ROUTES = {'/api/info': 'info', '/api/test': 'test', '/api/classify': 'classify', '/api/generate': 'generate',
          '/api/complete': 'complete'}


class HTTPError(Error):
    """An answer other than 400: its status and reason."""

    def __init__(self, status, reason, headers=()):
        super().__init__(reason)
        self.status, self.headers = status, dict(headers)


def image_from(request, info):
    """The image a request carries as a data URL (a drawing or an upload), prepared as image files are
    (images.prepare_image), at most MAX_PIXELS."""
    url = request.get('image')
    if not isinstance(url, str) or not url.startswith('data:image/') or ';base64,' not in url:
        raise Error("image must be an image as a data URL ('data:image/png;base64,...')")
    try:
        raw = base64.b64decode(url.split(';base64,', 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise Error('image is not valid base64')
    im = open_image(io.BytesIO(raw), 'the image', MAX_PIXELS)
    return torch.from_numpy(prepare_image(im, info, name='the image'))


def setting(request, key, default, kind):
    """A sampling setting of a request, checked by the command line's rule (configurator.RULES), never
    sample.py's -1 for the evaluation's choice: the page is given the temperature and guidance themselves."""
    value = request.get(key, default)
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise Error(f"{key} must be a {'number' if kind is float else 'whole number'}, got {str(value)[:40]!r}")
    check(key, value)
    return value


class Page:
    """What the page asks, answered by one model: each API route is a method of the same name, taking the
    request's JSON object and the image it carries (decoded before the model's lock is taken)."""

    def __init__(self, model, ck, codec, tok, info, test_images, test_labels, sampling, reading, keep, seed, checkpoint,
                 captions=None):
        self.model, self.ck, self.codec, self.tok, self.dataset = model, ck, codec, tok, info
        self.example = captions[0] if captions else ''  # a caption to show how one reads
        self.test_images, self.test_labels = test_images, test_labels
        self.sampling, self.reading, self.keep, self.seed, self.checkpoint = sampling, reading, keep, seed, checkpoint
        self.device = next(model.parameters()).device
        self.lock = threading.Lock()
        self.calls = 0

    def info(self, request, image):
        codec = self.codec
        return dict(title=self.dataset['title'], classes=codec.classes, key=codec.key,
                    image_size=self.dataset['image_size'], channels=self.dataset['channels'],
                    tokens_per_image=codec.tokens_per_image, grid=codec.grid, rows=codec.rows,
                    test_images=len(self.test_images), checkpoint=self.checkpoint, iteration=self.ck['iter_num'],
                    illustration='illustration' in codec.tasks, captioning='captioning' in codec.tasks,
                    caption_length=codec.caption_length, example_caption=self.example,
                    defaults=dict(n=4, temperature=self.sampling['temperature'], guidance=self.sampling['guidance'],
                                  keep=self.keep))

    def index(self, request):
        i = request.get('index')
        if type(i) is not int or not 0 <= i < len(self.test_images):
            raise Error(f"index must be a test image number 0..{len(self.test_images) - 1}, got {str(i)[:40]!r}")
        return i

    def class_of(self, request, optional=False):
        name = request.get('label', '')
        if optional and name in ('', None):
            return None
        if not isinstance(name, str):
            raise Error(f"label must be a class name, got {str(name)[:40]!r}")
        return self.codec.label(name)

    def sampling_of(self, request):
        return dict(self.sampling, temperature=setting(request, 'temperature', self.sampling['temperature'], float),
                    guidance=setting(request, 'guidance', self.sampling['guidance'], float))

    def test(self, request, image):
        i = self.index(request)
        return dict(image=data_url(self.test_images[i]), label=self.codec.classes[int(self.test_labels[i])])

    def classify(self, request, image):
        if image is None:
            raise Error("image must be an image as a data URL ('data:image/png;base64,...')")
        x = image[None].to(self.device)
        codes = self.tok.encode(x)
        p = read_labels(self.model, self.codec, self.tok, codes, x, **self.reading)[0].cpu()
        caption = write_captions(self.model, self.codec, codes)[0] if 'captioning' in self.codec.tasks else None
        return dict(classes=self.codec.classes, probs=p.tolist(), label=self.codec.classes[int(p.argmax())],
                    seen=data_url(x[0]), tokens=self.codec.image_text(codes[0].tolist()), caption=caption)

    def generate(self, request, image):
        """Images of a class (label), or of a caption (prompt)."""
        codec, prompt = self.codec, request.get('prompt')
        if prompt is not None:
            codec.learnt('illustration', use='prompt')
            if not isinstance(prompt, str):
                raise Error(f"prompt must be text, like 'a thick 7', got {str(prompt)[:40]!r}")
            codec.caption_ids(prompt)  # a bad prompt is the client's error, before any work
        else:
            y = self.class_of(request)
        n = setting(request, 'num_samples', 4, int)
        if n > 64:
            raise Error(f"num_samples must be at most 64 on the page, got {n}")
        sampling = self.sampling_of(request)
        g = torch.Generator(self.device).manual_seed(self.seed + self.calls)
        if prompt is not None:
            images, codes = draw_captions(self.model, codec, self.tok, [prompt] * n, g, **sampling)
            return dict(prompt=prompt, images=[data_url(im) for im in images],
                        tokens=[codec.text('illustration', codes=c.tolist(), caption=prompt) for c in codes])
        images, codes = generate_images(self.model, codec, self.tok, [y] * n, g, **sampling)
        return dict(label=codec.classes[y], images=[data_url(im) for im in images],
                    tokens=[codec.text('generation', y, c.tolist()) for c in codes])

    def complete(self, request, image):
        """Completions of a test image (index) or the drawing (image) from its first `keep` rows of codes,
        as the class asked for (label) or as none; each with the sequence it completes (the asked class
        where one was asked) and the class the model reads in it."""
        codec = self.codec
        y = self.class_of(request, optional=True)
        n = setting(request, 'num_samples', 4, int)
        k = setting(request, 'keep', self.keep, int)
        if n > 16:
            raise Error(f"num_samples must be at most 16 on the page, got {n}")
        kept = kept_rows(codec, k)
        if 'index' in request:
            x = self.test_images[self.index(request)][None]
        elif image is not None:
            x = image[None]
        else:
            raise Error("complete needs index (a test image) or image (a data URL)")
        sampling = self.sampling_of(request)
        g = torch.Generator(self.device).manual_seed(self.seed + self.calls)
        images, codes, probs = complete_images(self.model, codec, self.tok, self.tok.encode(x.to(self.device)).cpu(), kept,
                                               y, n, g, **sampling)
        out = []
        for im, c, p in zip(images, codes, probs):
            read = int(p.argmax())
            tokens = (codec.text('generation', y, c.tolist()) if y is not None else
                      codec.text('classification', read, c.tolist()))
            out.append(dict(image=data_url(im), tokens=tokens, name=codec.classes[read], p=float(p.max())))
        return dict(asked=None if y is None else codec.classes[y], original=data_url(x[0]),
                    kept=data_url(kept_view(x, codec, k)[0]), completions=out)

    def answer(self, route, request):
        """The answer to one request: its image decoded first, then the model, one request at a time."""
        image = image_from(request, self.dataset) if route in ('classify', 'complete') and 'image' in request else None
        with self.lock, torch.no_grad():
            self.calls += 1
            return getattr(self, route)(request, image)


def allowed_hosts(host):
    """The host names a browser may use to reach a server bound to host: the loopback names, the name
    it was given, and where it is bound to every interface, the machine's own names and any address."""
    names = {'localhost', '127.0.0.1', '::1', host.strip('[]').lower()}
    wildcard = host in ('', '0.0.0.0', '::')
    if wildcard:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return names, wildcard


def host_allowed(value, names, wildcard, port):
    """Is a Host (or an Origin's host and port) one this server answers to? An IP address is never a
    rebound name; a name must be one of names; the port, if given, must be the server's."""
    try:
        parts = urlsplit('//' + value)
        name, given = (parts.hostname or '').lower(), parts.port
    except ValueError:
        return False
    if given is not None and given != port:
        return False
    try:
        ipaddress.ip_address(name)
        return wildcard or name in names
    except ValueError:
        return name in names


def origin_allowed(origin, names, wildcard, port):
    """Is an Origin header this server's own page (http, an allowed host, the server's port)?"""
    try:
        parts = urlsplit(origin)
        given = parts.port or 80
    except ValueError:
        return False
    return parts.scheme == 'http' and given == port and host_allowed(parts.netloc, names, wildcard, port)


class Handler(BaseHTTPRequestHandler):
    """One request to the page's server (self.server: its page, html and allowed host names)."""
    timeout = IDLE_TIMEOUT  # on every read of the socket: a client that sends nothing is let go
    error_content_type = 'application/json; charset=utf-8'

    def parse_request(self):
        """http.server's parsing, after the empty lines a server should skip before a request line (RFC
        9112, 2.2); a request with no request line at all is answered rather than dropped."""
        for _ in range(8):
            if self.raw_requestline.strip(b'\r\n'):
                break
            self.raw_requestline = self.rfile.readline(65537)
        if super().parse_request():
            return True
        if not self.requestline:  # http.server closes such a connection silently
            self.request_version = 'HTTP/1.0'
            self.send_error(400, 'a request needs a request line, like GET / HTTP/1.1')
        return False

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (a bad request line, an unknown method, headers too long) in JSON."""
        self.close_connection = True
        try:
            self.reply(code, dict(error=message or self.responses.get(code, ('error',))[0]))
        except OSError:
            pass

    def reply(self, status, body, kind='application/json', headers=()):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header('Content-Type', kind + '; charset=utf-8')
        self.send_header('Content-Length', str(len(data)))
        self.send_header('X-Content-Type-Options', 'nosniff')
        for k, v in dict(headers).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(data)

    def guard(self):
        """Refuse what a hostile page could send: a Host this server is not bound for (DNS
        rebinding), an Origin other than its own."""
        server_port = self.server.server_address[1]
        value = self.headers.get('Host', '')
        if not host_allowed(value, *self.server.hosts, server_port):
            raise HTTPError(403, f"host {value[:80]!r} is not one this server answers to (it is bound to "
                                 f"{self.server.server_address[0]}): open http://localhost:{server_port}/")
        origin = self.headers.get('Origin')
        if origin is not None and not origin_allowed(origin, *self.server.hosts, server_port):
            raise HTTPError(403, f"requests from {origin[:80]!r} are refused: only this server's own page may "
                                 f"use its API")

    def handle_one(self, work):
        """Run work, answering whatever happens: an Error is the client's (its status), anything else
        the server's (500, the reason in one line, the traceback in the log)."""
        try:
            self.guard()
            work()
        except HTTPError as e:
            self.reply(e.status, dict(error=str(e)), headers=e.headers)
        except Error as e:
            self.reply(400, dict(error=str(e)))
        except TimeoutError:  # the body stopped arriving
            self.close_connection = True
            self.reply(408, dict(error=f"the request stopped arriving: nothing for {IDLE_TIMEOUT} s"))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:
            traceback.print_exc(file=sys.stdout)
            self.reply(500, dict(error=f"the server failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))

    def do_GET(self):  # and HEAD: reply() leaves the body out
        def work():
            path = urlsplit(self.path).path
            if path in ('/', '/index.html'):
                return self.reply(200, self.server.html, 'text/html')
            if path == '/api/info':
                return self.reply(200, self.server.page.answer('info', {}))
            raise HTTPError(404, f"no page {path[:200]}: the page is at /")
        self.handle_one(work)

    do_HEAD = do_GET

    def do_POST(self):
        def work():
            path = urlsplit(self.path).path
            route = ROUTES.get(path)
            if route is None:
                raise HTTPError(404, f"no API {path[:200]}: expected one of {', '.join(ROUTES)}")
            kind = self.headers.get('Content-Type', '').split(';')[0].strip().lower()
            if kind != 'application/json':
                raise HTTPError(415, f"the request's body must be application/json, got {kind[:80] or 'none'!r}")
            try:
                length = int(self.headers.get('Content-Length') or -1)
            except ValueError:
                length = -1
            if length < 0:
                raise HTTPError(411, 'a request needs a Content-Length')
            if length > MAX_BODY:
                self.close_connection = True  # the body is not read
                raise HTTPError(413, f"the request is {length:,} bytes; the limit is {MAX_BODY:,}")
            body = self.rfile.read(length)
            if len(body) < length:
                raise HTTPError(400, f"the request ended after {len(body):,} of its {length:,} bytes")
            try:
                request = json.loads(body or b'null')
            except RecursionError:
                raise Error('the request is not JSON this server reads (nested too deeply)')
            except (ValueError, UnicodeDecodeError) as e:
                raise Error(f"the request is not JSON ({str(e)[:200]})")
            if not isinstance(request, dict):
                raise Error('the request must be a JSON object')
            self.reply(200, self.server.page.answer(route, request))
        self.handle_one(work)

    def refuse(self):
        def work():
            raise HTTPError(405, f"{self.command} is not allowed here: GET, HEAD or POST", [('Allow', 'GET, HEAD, POST')])
        self.handle_one(work)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = refuse

    def log_message(self, fmt, *args):  # one short line per request
        print(f"{self.address_string()} {fmt % args}", flush=True)


def make_server(page, host, port):
    """An HTTP server (not yet serving) for page on host:port; port 0 takes a free one."""

    class Server(ThreadingHTTPServer):
        request_queue_size = BACKLOG  # a burst of requests waits for the lock rather than being reset
        address_family = socket.AF_INET6 if ':' in host else socket.AF_INET

    try:
        server = Server((host, port), Handler)
    except OSError as e:  # a name that does not resolve, a port in use or not ours to take
        raise Error(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --port, or a --host this "
                    f"machine has")
    with open(PAGE, encoding='utf-8') as f:
        server.html = f.read()
    server.page, server.hosts = page, allowed_hosts(host)
    return server


def serve(page, host, port):
    """Serve the page until Ctrl-C."""
    server = make_server(page, host, port)
    shown = 'localhost' if host in ('127.0.0.1', '', '::1') else host
    print(f"serving {page.dataset['title']} ({len(page.codec.classes)} classes, {page.checkpoint}, iteration "
          f"{page.ck['iter_num']}) at http://{shown}:{server.server_address[1]}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print('stopped')
    finally:
        server.server_close()
