# One image for every service; the command picks the service and its role:
#   python -m points api | python -m points worker | python -m shared.migrate
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.lock pyproject.toml ./
RUN pip install --no-cache-dir -r requirements.lock
COPY shared ./shared
COPY devstack ./devstack
COPY membershipctl ./membershipctl
COPY services ./services
RUN pip install --no-cache-dir --no-deps .
USER 65534
EXPOSE 8000
