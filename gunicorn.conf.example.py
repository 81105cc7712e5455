# A gunicorn config using asyncbridge. The server adapter lands with the adapter issue; until then
# this file only shows the intended two lines.
# from asyncbridge.gunicorn import post_fork, worker_exit
bind = "127.0.0.1:8000"
workers = 2
