"""Batch service errors: one table of codes, one way to raise them, one renderer."""
from __future__ import annotations

from typing import Optional

# code -> (HTTP status, default message), as the real service words them.
ERROR_TABLE: dict[str, tuple[int, str]] = {
    "AuthenticationFailed": (403, "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature."),
    "MissingRequiredHeader": (400, "An HTTP header that's mandatory for this request is not specified."),
    "InvalidHeaderValue": (400, "The value for one of the HTTP headers is not in the correct format."),
    "MissingRequiredQueryParameter": (400, "A query parameter that's mandatory for this request is not specified."),
    "InvalidQueryParameterValue": (400, "Value for one of the query parameters specified in the request URI is invalid."),
    "UnsupportedApiVersion": (400, "The specified api-version is not supported."),
    "InvalidRequestBody": (400, "The specified Request Body is not syntactically valid."),
    "MissingRequiredProperty": (400, "A required property was not specified in the request body."),
    "InvalidPropertyValue": (400, "The value provided for one of the properties in the request body is invalid."),
    "InvalidUri": (400, "The requested URI does not represent any resource on the server."),
    "UnsupportedOperation": (400, "The requested operation is not supported by the local emulator."),
    "FeatureNotEmulated": (501, "The request uses a Batch feature that localbatch does not emulate."),
    "RequestBodyTooLarge": (413, "The request body is too large and exceeds the maximum permissible limit."),
    "TooManyRequests": (429, "Too many requests."),
    "RequestTimeout": (408, "The request was not received within the time the server allows."),
    "OperationTimedOut": (500, "The operation could not be completed within the permitted time."),
    "InternalError": (500, "Server encountered an internal error. Please try the request again."),
    "TooManyEnableAutoScaleRequests": (503, "Too many Enable Pool AutoScale requests are issued on the pool."),
    "ServerBusy": (503, "The server is currently unable to receive requests. Please retry your request."),
    "PoolNotFound": (404, "The specified pool does not exist."),
    "NodeNotFound": (404, "The specified node does not exist."),
    "NodeUserNotFound": (404, "The node user does not exist."),
    "JobNotFound": (404, "The specified job does not exist."),
    "JobScheduleNotFound": (404, "The specified job schedule does not exist."),
    "TaskNotFound": (404, "The specified task does not exist."),
    "FileNotFound": (404, "The specified file does not exist."),
    "ResourceNotFound": (404, "The specified resource does not exist."),
    "ApplicationNotFound": (404, "The specified application does not exist."),
    "PoolExists": (409, "The specified pool already exists."),
    "JobExists": (409, "The specified job already exists."),
    "JobScheduleExists": (409, "The specified job schedule already exists."),
    "JobScheduleBeingDeleted": (409, "The specified job schedule has been marked for deletion and is being reclaimed."),
    "JobScheduleBeingTerminated": (409, "The specified job schedule is being terminated."),
    "JobScheduleCompleted": (409, "The specified job schedule is already in a completed state."),
    "TaskExists": (409, "The specified task already exists."),
    "NodeUserExists": (409, "The specified node user already exists."),
    "PoolBeingDeleted": (409, "The specified pool has been marked for deletion and is being reclaimed."),
    "JobBeingDeleted": (409, "The specified job has been marked for deletion and is being reclaimed."),
    "JobBeingTerminated": (409, "The specified job is being terminated."),
    "JobCompleted": (409, "The specified job is already in a completed state."),
    "JobNotActive": (409, "The specified job is not in an active state."),
    "PoolBeingResized": (409, "A pool operation was attempted which is not permitted when the pool is in the "
                               "process of being resized."),
    "TaskDependenciesNotSpecifiedOnJob": (409, "The specified job does not have task dependencies enabled."),
    "TaskDependencyListTooLong": (400, "The task's list of dependencies (dependsOn.taskIds) is too long."),
    "TaskIdSameAsJobPreparationTask": (409, "The specified task id is the same as the job preparation task's id."),
    "TaskIdSameAsJobReleaseTask": (409, "The specified task id is the same as the job release task's id."),
    "TaskCompleted": (409, "The specified task is already completed."),
    "TaskNotCompleted": (409, "The specified task is not completed."),
    "TaskSucceeded": (409, "The specified task completed successfully and cannot be reactivated."),
    "NodeNotReady": (409, "The node is not in a state that allows this operation."),
    "OperationInvalidForCurrentState": (409, "The operation is not allowed on the resource in its current state."),
    "ConditionNotMet": (412, "The condition specified using HTTP conditional header(s) is not met."),
    "NotModified": (304, "The resource has not been modified since the time or ETag the request names."),
}


class BatchServiceError(Exception):
    """An error the emulator answers with, in the Batch error format."""

    def __init__(self, code: str, message: Optional[str] = None,
                 values: Optional[dict[str, str]] = None, status: Optional[int] = None,
                 headers: Optional[dict[str, str]] = None):
        default_status, default_message = ERROR_TABLE[code]
        self.code = code
        self.status = status or default_status
        self.message = message or default_message
        self.values = values or {}
        self.headers = headers or {}  # sent with the error (e.g. WWW-Authenticate)
        super().__init__(f"{code}: {self.message}")

    def body(self, request_id: str, time_text: str, metadata_base: str) -> dict:
        """The JSON body the real service returns for this error."""
        body: dict = {
            "odata.metadata": f"{metadata_base}/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
            "code": self.code,
            "message": {"lang": "en-US", "value": f"{self.message}\nRequestId:{request_id}\nTime:{time_text}"},
        }
        if self.values:
            body["values"] = [{"key": k, "value": v} for k, v in self.values.items()]
        return body

    def item_error(self) -> dict:
        """The error object used inside per-item results (task collections)."""
        error: dict = {"code": self.code, "message": {"lang": "en-US", "value": self.message}}
        if self.values:
            error["values"] = [{"key": k, "value": v} for k, v in self.values.items()]
        return error


def invalid_property(name: str, value: object, reason: str) -> BatchServiceError:
    return BatchServiceError("InvalidPropertyValue", values={
        "PropertyName": name, "PropertyValue": str(value), "Reason": reason})


def missing_property(name: str) -> BatchServiceError:
    return BatchServiceError("MissingRequiredProperty", values={"PropertyName": name})


def not_found(kind: str) -> BatchServiceError:
    return BatchServiceError(f"{kind}NotFound")
