# Sourced by the scripts: the embedded defaults (everything under ALUMI_HOME, default ./.alumi).
export ALUMI_HOME=${ALUMI_HOME:-$PWD/.alumi}
export DAGSTER_HOME=${DAGSTER_HOME:-$ALUMI_HOME/dagster}
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
export PATH="$PWD/.venv/bin:$PATH"
