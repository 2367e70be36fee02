# One image for all four processes; compose and Kubernetes pick the command.
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

COPY pyproject.toml Makefile catalogue.yaml ./
COPY protos protos
COPY paylayer paylayer
COPY gateway gateway
COPY payments_service payments_service
COPY entitlements_service entitlements_service
COPY accounts_service accounts_service
COPY console console

# Generated code is built here from the .proto files, as `make protos` does, then the
# generator is removed: the image runs, it does not build.
RUN pip install --no-cache-dir -e . grpcio-tools==1.85.1 \
    && python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. protos/*/v1/*.proto \
    && pip uninstall -y grpcio-tools

# The production image signs no fake webhooks: `paylayer trigger` refuses to run here.
ENV PAYLAYER_TRIGGER_DISABLED=1

USER nobody
CMD ["paylayer", "health"]
