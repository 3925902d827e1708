"""Every source's metrics, registered: what the read path and the CLI can report on."""

from analytics_pipeline.campaigns.metrics import CAMPAIGN_METRICS
from analytics_pipeline.core.registry import METRICS, Metric, get_metric
from analytics_pipeline.email.metrics import EMAIL_METRICS
from analytics_pipeline.push.metrics import PUSH_METRICS
from analytics_pipeline.support.metrics import REPORTING_METRICS

ALL_METRICS: tuple[Metric, ...] = (REPORTING_METRICS + EMAIL_METRICS + PUSH_METRICS
                                   + CAMPAIGN_METRICS)

__all__ = ["ALL_METRICS", "METRICS", "get_metric"]
