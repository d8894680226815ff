# daydream learner: the workstation side (CUDA GPU). Replay (Ray), gateway, training,
# weight publication, checkpoints.
#
#   docker build -f docker/learner.Dockerfile -t daydream-learner:0.1.0 .
#   docker run --rm --gpus all --shm-size=2g -p 5555:5555 \
#       -v /etc/daydream/keys:/var/lib/daydream/keys:ro -v daydream-logdir:/var/lib/daydream/logdir \
#       daydream-learner:0.1.0 --config configs/ur5_pick.yaml --bind 'tcp://*:5555' \
#       --logdir /var/lib/daydream/logdir --keys /var/lib/daydream/keys
#
# --shm-size: Ray keeps its object store in /dev/shm (Docker's default is 64 MB); it must be
# larger than the object store (learner.ray_object_store_mb, 256 MB by default) plus headroom.
# CUDA base pinned by tag: it carries the NVIDIA container toolkit's settings
# (NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES); the CUDA libraries themselves come
# with the pinned torch wheel from PyTorch's CUDA 12.8 index (host driver >= 570).
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# the learner builds the robot drivers to read their spaces, so it has every robot extra
ARG EXTRAS=all

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAYDREAM_CONFIG_DIR=/opt/daydream/configs \
    PATH=/opt/daydream/.venv/bin:$PATH

# Ubuntu 24.04's Python (3.12); apt packages float within the pinned release (security fixes)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 daydream \
    && useradd --system --uid 10001 --gid daydream \
       --home-dir /var/lib/daydream --create-home --shell /usr/sbin/nologin daydream \
    && mkdir -p /var/lib/daydream/keys /var/lib/daydream/logdir \
    && chown -R daydream:daydream /var/lib/daydream

WORKDIR /opt/daydream
RUN python3 -m venv /opt/daydream/.venv \
    && pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml requirements-ci.txt README.md ./
COPY daydream ./daydream
COPY robots ./robots
COPY configs ./configs
# editable, as scripts/install does: configs/ stay beside the package. The constraints pin
# torch==2.13.0 too, which the CUDA build above already satisfies (2.13.0+cu128).
RUN pip install -c requirements-ci.txt -e ".[${EXTRAS}]"

USER 10001:10001
EXPOSE 5555
VOLUME ["/var/lib/daydream/logdir"]
ENTRYPOINT ["daydream", "learner"]
CMD ["--help"]
