"""CLI: python -m tunerag_workloads.serve (configured by TUNERAG_SERVE_CONFIG, TUNERAG_DATABASE_URL, PORT)."""

from tunerag_workloads.serve.server import run

if __name__ == "__main__":
    run()
