# One image for all four processes; compose and Kubernetes pick the command.
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

COPY pyproject.toml setup.py Makefile ./
COPY protos protos
COPY paylayer paylayer
COPY gateway gateway
COPY payments_service payments_service
COPY entitlements_service entitlements_service
COPY accounts_service accounts_service
COPY console console

# The build hook (setup.py) generates the gRPC code from the .proto files, as `make protos`
# does; the generator stays in the build's own environment: the image runs, it does not build.
RUN pip install --no-cache-dir -e .

# The production image signs no fake webhooks: `paylayer trigger` refuses to run here.
ENV PAYLAYER_TRIGGER_DISABLED=1

USER nobody
CMD ["paylayer", "health"]
