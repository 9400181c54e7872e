FROM python:3.11-slim
# Graphviz draws the dashboard's run graphs (without it the pages show the graph as text).
RUN apt-get update && apt-get install -y --no-install-recommends graphviz \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir .
CMD ["ezgraph", "worker"]
