# eddy's worker, retrainer and exporter (docker-compose.yml runs one container each).
FROM python:3.11-slim
WORKDIR /app
# The CPU build of torch: PyPI's default Linux wheel pulls several GB of CUDA.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY models models
COPY streams streams
COPY consumers consumers
COPY eddy eddy
COPY schemas schemas
RUN pip install --no-cache-dir .
# An unprivileged user owning /data (a new named volume there takes its owner); a
# numeric USER lets Kubernetes' runAsNonRoot verify it.
RUN groupadd --system --gid 10001 eddy \
    && useradd --system --uid 10001 --gid eddy --create-home eddy \
    && mkdir -p /data && chown eddy:eddy /data
ENV EDDY_DATA_DIR=/data
VOLUME /data
USER 10001:10001
ENTRYPOINT ["eddy"]
CMD ["--help"]
