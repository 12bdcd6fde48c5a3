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
ENV EDDY_DATA_DIR=/data
VOLUME /data
ENTRYPOINT ["eddy"]
CMD ["--help"]
