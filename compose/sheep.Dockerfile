# The sheep image: Debian 12 + python3 + a venv with sheepdog-py and its dependencies.
# Build context: compose/ (see compose/cluster.sh build). Nothing is pulled: BASE_IMAGE is made
# locally by compose/build-base-image.sh, Python packages come from wheels/ which the build step
# fills with `pip download` (deps) and `pip wheel` (this project) on the host.
ARG BASE_IMAGE=localhost/debian:bookworm
FROM ${BASE_IMAGE}
LABEL org.sheepdog-py.image=sheep

ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 PYTHONUNBUFFERED=1 \
    PATH=/opt/sheepdog/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && python3 -m venv /opt/sheepdog

# Third-party wheels first: this layer stays cached until the dependency list changes.
COPY wheels/deps/ /tmp/wheels/deps/
RUN pip install --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /tmp/wheels/deps -r /tmp/wheels/deps/requirements.txt \
 && rm -rf /tmp/wheels

# The project itself (small, changes often).
COPY wheels/project/ /tmp/wheels/project/
RUN pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check \
        /tmp/wheels/project/*.whl \
 && rm -rf /tmp/wheels

COPY entrypoint-sheep.sh /usr/local/bin/entrypoint-sheep.sh
RUN chmod 0755 /usr/local/bin/entrypoint-sheep.sh && mkdir -p /var/lib/sheepdog

VOLUME ["/var/lib/sheepdog"]
# peer protocol, HTTP admin API (collie -p), NBD
EXPOSE 7100 7000 10809
# Healthy = the admin API answers GET /health (the daemon is started and serving).
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python3", "-c", "import os,sys,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SHEEP_ADMIN_PORT', '7000'), timeout=2); sys.exit(0)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/entrypoint-sheep.sh"]
