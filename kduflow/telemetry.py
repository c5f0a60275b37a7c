"""The worker's telemetry: the SDK runtime's Prometheus endpoint and optional OpenTelemetry tracing.

* ``KDUFLOW_METRICS_BIND`` (``address:port``): :func:`runtime` builds a Temporal ``Runtime`` whose
  Rust core serves ``/metrics`` there, with the SDK's own ``temporal_*`` metrics and kduflow's
  ``kduflow_*`` ones (``kduflow.metrics``). The client is connected with that runtime.
* ``KDUFLOW_OTEL=true``: :func:`tracing_interceptors` returns the SDK contrib's
  ``TracingInterceptor`` (spans for starting, running and completing workflows and activities).
  Unless the process already has an OpenTelemetry tracer provider, one is installed that sends
  spans with the OTLP/HTTP exporter, configured by the standard ``OTEL_EXPORTER_OTLP_*`` and
  ``OTEL_SERVICE_NAME`` variables. Needs the ``kduflow[otel]`` extra.
"""

from __future__ import annotations

from typing import Any

from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from kduflow import metrics
from kduflow.config import ConfigError, Settings

OTEL_HINT = "install the otel extra (pip install 'kduflow[otel]')"


def runtime(settings: Settings) -> Runtime | None:
    """A runtime serving Prometheus metrics on ``settings.metrics_bind``; None when that is unset.

    Raises:
        ConfigError: naming KDUFLOW_METRICS_BIND, when the address cannot be bound.
    """
    if not settings.metrics_bind:
        return None
    buckets = [float(b) for b in metrics.DURATION_BUCKETS_MS]
    try:
        return Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(
                    bind_address=settings.metrics_bind,
                    histogram_bucket_overrides={
                        metrics.HELM_COMMAND_DURATION: buckets,
                        metrics.LOCK_WAIT: buckets,
                    },
                )
            )
        )
    except Exception as err:  # the Rust core reports a bind failure as a plain exception
        raise ConfigError(
            f"KDUFLOW_METRICS_BIND={settings.metrics_bind!r}: cannot serve metrics: {err}"
        ) from None


def tracing_interceptors(settings: Settings) -> list[Any]:
    """``[TracingInterceptor()]`` with ``settings.otel``, else ``[]``.

    Raises:
        ConfigError: naming KDUFLOW_OTEL, when the OpenTelemetry packages are not installed.
    """
    if not settings.otel:
        return []
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError as err:
        raise ConfigError(
            f"KDUFLOW_OTEL=true: OpenTelemetry is not installed ({err.name}); {OTEL_HINT}"
        ) from None
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as err:
            raise ConfigError(
                f"KDUFLOW_OTEL=true: the OTLP exporter is not installed ({err.name}); {OTEL_HINT}"
            ) from None
        provider = TracerProvider()  # resource from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    return [TracingInterceptor()]
