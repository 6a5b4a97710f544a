# syntax=docker/dockerfile:1
# GPU image for training: docker build -t lightning-noprop . (see README.md, "Docker").
# A slim Python base, so the only torch in the image is requirements.txt's pin: pip installs the torch/torchvision pair
# from PyPI, whose Linux x86_64 wheels bring their own CUDA libraries (the nvidia-* wheels). The host needs only the
# NVIDIA driver and the container toolkit (docker run --gpus all). A PyTorch CUDA image as base would add a second,
# unpinned torch unless its version is exactly the pin.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app

# Dependencies first, in their own layer, so code changes do not reinstall them; the pip cache stays out of the image.
COPY requirements.txt .
RUN --mount=type=cache,target=/root/.cache/pip python -m pip install -r requirements.txt

RUN useradd --create-home --uid 1000 noprop && mkdir -p /app/logs /app/data && chown -R noprop /app
# The code, the configs and MNIST's four .gz files (data/MNIST/raw, see .dockerignore): the default CMD trains offline.
COPY --chown=noprop . .
USER noprop

ENTRYPOINT ["python", "main.py"]
CMD ["fit", "--config", "configs/noprop_dt.yaml"]
