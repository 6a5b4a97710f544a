# GPU image for training: docker build -t lightning-noprop . (see README.md, "Docker").
# Any PyTorch CUDA runtime image works as the base; requirements.txt then pins the exact torch/torchvision
# pair (pip keeps the base's torch when it already matches the pin).
ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first, in their own layer, so code changes do not reinstall them.
COPY requirements.txt .
RUN --mount=type=cache,target=/root/.cache/pip python -m pip install -r requirements.txt

RUN useradd --create-home --uid 1000 noprop && mkdir -p /app/logs /app/data && chown -R noprop /app
COPY --chown=noprop . .
USER noprop

ENTRYPOINT ["python", "main.py"]
CMD ["fit", "--config", "configs/noprop_dt.yaml"]
