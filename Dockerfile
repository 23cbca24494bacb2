# The worker image: the choreo-streams package with its schemas and contracts.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY processors ./processors
COPY schemas ./schemas
COPY contracts ./contracts
COPY ops ./ops
RUN pip install --no-cache-dir -e . && useradd --create-home choreo && mkdir -p /var/lib/choreo/state && chown choreo /var/lib/choreo/state
USER choreo
EXPOSE 9400
CMD ["choreo", "worker", "--app", "processors.agents.app:app", "--metrics-port", "9400"]
