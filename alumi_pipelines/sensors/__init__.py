"""Sensors and schedules: landing (new batches), corrections (validate, retrain), drift (retrain), review (Label
Studio → corrections), weekly drift."""

from alumi_pipelines.sensors.corrections import corrections_sensor
from alumi_pipelines.sensors.drift import drift_sensor, weekly_drift_schedule
from alumi_pipelines.sensors.landing import landing_sensor
from alumi_pipelines.sensors.review import review_sensor

SENSORS = [landing_sensor, corrections_sensor, drift_sensor, review_sensor]
SCHEDULES = [weekly_drift_schedule]
