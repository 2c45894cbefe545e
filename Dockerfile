# The tuner studio on 0.0.0.0:7860.
#   docker build -t tuner . && docker run --rm -p 7860:7860 tuner
# Keep the ImageNet weights between runs by mounting the torch hub cache:
#   docker run --rm -p 7860:7860 -v ~/.cache/torch:/home/tuner/.cache/torch tuner
# With an NVIDIA GPU (and the NVIDIA container toolkit): add --gpus all; for TensorRT export, build with
#   docker build --build-arg EXTRA_REQUIREMENTS=requirements-gpu.txt -t tuner-gpu .
# torch.compile (--compile) builds code while training and needs a compiler, which the slim image lacks:
#   docker build --build-arg APT_PACKAGES=build-essential ...
FROM python:3.11-slim

ARG EXTRA_REQUIREMENTS=
ARG APT_PACKAGES=
RUN if [ -n "$APT_PACKAGES" ]; then \
      apt-get update && apt-get install -y --no-install-recommends $APT_PACKAGES && rm -rf /var/lib/apt/lists/*; \
    fi
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860

RUN useradd --create-home --uid 1000 tuner
WORKDIR /app

# Requirements first, so code changes do not reinstall PyTorch.
COPY requirements*.txt ./
RUN pip install -r requirements.txt ${EXTRA_REQUIREMENTS:+-r $EXTRA_REQUIREMENTS}

COPY --chown=tuner:tuner app.py pyproject.toml README.md ./
COPY --chown=tuner:tuner tuner ./tuner
# tuner itself (its requirements are installed above): the `tuner` and `tuner-studio` commands.
RUN pip install --no-deps --no-build-isolation -e .

USER tuner
EXPOSE 7860
# 0.0.0.0 serves every interface, so the studio treats itself as shared: uploads only, no server folders
# (add --server-folders on to browse folders mounted into the container).
CMD ["python", "app.py"]
