# daydream actor: the robot-computer side (CPU only). A robot acting with the newest policy
# from a learner, streaming its experience over ZeroMQ (CURVE).
#
#   docker build -f docker/actor.Dockerfile -t daydream-actor:0.1.0 .
#   docker run --rm --network host \
#       --device /dev/ttyUSB0 --group-add "$(getent group dialout | cut -d: -f3)" \
#       --device /dev/video0 --group-add "$(getent group video | cut -d: -f3)" \
#       -v /etc/daydream/keys:/var/lib/daydream/keys:ro -v daydream-actor:/var/lib/daydream/logdir \
#       daydream-actor:0.1.0 --config configs/quadruped_walk.yaml --robot quadruped \
#       --learner tcp://WORKSTATION:5555 --keys /var/lib/daydream/keys --id quad-1 \
#       --logdir /var/lib/daydream/logdir
#
# Devices: the serial servo board (--device /dev/ttyUSB0, group dialout) and the camera
# (--device /dev/video0, group video) are passed through; --group-add uses the HOST's group
# ids, which own the device nodes. The UR5 needs no device, only the network (host network:
# RTDE 30004, dashboard 29999, gripper 63352). See docker/README.md and deploy/.
# Python slim, pinned by tag; the same Python minor as the development machines (3.11).
FROM python:3.11.9-slim-bookworm

# robot extras: ur5 (ur_rtde), quadruped (pyserial); compose adds `sim` for simulated robots
ARG EXTRAS=ur5,quadruped
ARG TORCH_VERSION=2.13.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAYDREAM_CONFIG_DIR=/opt/daydream/configs \
    PATH=/opt/daydream/.venv/bin:$PATH

# non-root user; dialout (serial board) and video (camera) inside the image
RUN groupadd --system --gid 10001 daydream \
    && useradd --system --uid 10001 --gid daydream --groups dialout,video \
       --home-dir /var/lib/daydream --create-home --shell /usr/sbin/nologin daydream \
    && mkdir -p /var/lib/daydream/keys /var/lib/daydream/logdir \
    && chown -R daydream:daydream /var/lib/daydream

WORKDIR /opt/daydream
# torch first, pinned, the CPU build (an unpinned torch pulls a multi-GB CUDA build)
RUN python -m venv /opt/daydream/.venv \
    && pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
COPY pyproject.toml requirements-ci.txt README.md ./
COPY daydream ./daydream
COPY robots ./robots
COPY configs ./configs
# editable, as scripts/install does: configs/ stay beside the package
RUN pip install -c requirements-ci.txt -e ".[${EXTRAS}]"

USER 10001:10001
VOLUME ["/var/lib/daydream/logdir"]
ENTRYPOINT ["daydream", "actor"]
CMD ["--help"]
