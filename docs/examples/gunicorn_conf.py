# The smallest gunicorn config that uses asyncbridge: these two lines start each worker's loop
# after fork and drain it when the worker exits. Run: gunicorn -c gunicorn_conf.py wsgi_app
from asyncbridge.gunicorn import post_fork, worker_exit  # noqa: F401

bind = "127.0.0.1:8000"
workers = 2
