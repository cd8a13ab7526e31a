# The operator image: the dedicap package only (the local stack under deploy/local is for
# development and tests and is not installed). The chart runs `dedicap run` from it.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
# Only the `dedicap` package: drop deploy/local from the package search for this build.
RUN sed -i 's|where = \["operator", "deploy/local"\]|where = ["operator"]|' pyproject.toml \
 && pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --wheel-dir /wheels /wheels/dedicap-*.whl

FROM python:3.11-slim
RUN useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin dedicap
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels dedicap && rm -rf /wheels
USER 65532:65532
ENTRYPOINT ["dedicap"]
CMD ["run", "--all-namespaces"]
