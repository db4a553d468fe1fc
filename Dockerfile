# extauth service image: `docker build -t extauth .`
# Runs as a non-root user; the config directory is mounted read-only at /config.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY extauth ./extauth
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home extauth
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
EXPOSE 9001 9090
ENTRYPOINT ["extauth"]
CMD ["serve", "--config-dir", "/config", "--grpc-address", "0.0.0.0:9001", "--http-address", "0.0.0.0:9090"]
