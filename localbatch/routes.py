"""The route table: every REST operation localbatch serves, by verb and path template."""
from __future__ import annotations

from .handlers import account, autoscale, files, jobs, jobschedules, nodeextras, nodes, pools, tasks
from .http import Router

POOL = "/pools/{poolId}"
NODE = POOL + "/nodes/{nodeId}"
JOB = "/jobs/{jobId}"
TASK = JOB + "/tasks/{taskId}"
SCHEDULE = "/jobschedules/{jobScheduleId}"

# Operations of the SDK whose feature is not emulated: they answer 501 FeatureNotEmulated.
NOT_EMULATED = (
    ("POST", NODE + "/start", "start_node"),
    ("POST", NODE + "/deallocate", "deallocate_node"),
)


def build_router() -> Router:
    router = Router()
    add = router.add
    add("GET", "/supportedimages", pools.list_supported_images)
    add("GET", "/nodecounts", pools.list_pool_node_counts)
    add("POST", "/pools", pools.create_pool)
    add("GET", "/pools", pools.list_pools)
    add("GET", POOL, pools.get_pool)
    add("HEAD", POOL, pools.pool_exists)
    add("DELETE", POOL, pools.delete_pool)
    add("PATCH", POOL, pools.update_pool)
    add("POST", POOL + "/updateproperties", pools.replace_pool_properties)
    add("POST", POOL + "/resize", pools.resize_pool)
    add("POST", POOL + "/stopresize", pools.stop_pool_resize)
    add("POST", POOL + "/removenodes", pools.remove_nodes)
    add("POST", POOL + "/enableautoscale", autoscale.enable_pool_auto_scale)
    add("POST", POOL + "/disableautoscale", autoscale.disable_pool_auto_scale)
    add("POST", POOL + "/evaluateautoscale", autoscale.evaluate_pool_auto_scale)
    add("GET", POOL + "/nodes", nodes.list_nodes)
    add("GET", NODE, nodes.get_node)
    add("POST", NODE + "/reboot", nodes.reboot_node)
    add("POST", NODE + "/reimage", nodes.reimage_node)
    add("POST", NODE + "/disablescheduling", nodes.disable_node_scheduling)
    add("POST", NODE + "/enablescheduling", nodes.enable_node_scheduling)
    add("POST", NODE + "/users", nodes.create_node_user)
    add("PUT", NODE + "/users/{userName}", nodes.replace_node_user)
    add("DELETE", NODE + "/users/{userName}", nodes.delete_node_user)
    add("GET", NODE + "/remoteloginsettings", nodes.get_node_remote_login_settings)
    add("GET", NODE + "/extensions", nodeextras.list_node_extensions)
    add("GET", NODE + "/extensions/{extensionName}", nodeextras.get_node_extension)
    add("POST", NODE + "/uploadbatchservicelogs", nodeextras.upload_node_logs)
    add("GET", NODE + "/files", files.list_node_files)
    add("GET", NODE + "/files/{filePath}", files.get_node_file)
    add("HEAD", NODE + "/files/{filePath}", files.get_node_file, "get_node_file_properties")
    add("DELETE", NODE + "/files/{filePath}", files.delete_node_file)
    add("POST", "/jobs", jobs.create_job)
    add("GET", "/jobs", jobs.list_jobs)
    add("GET", JOB, jobs.get_job)
    add("PATCH", JOB, jobs.update_job)
    add("PUT", JOB, jobs.replace_job)
    add("DELETE", JOB, jobs.delete_job)
    add("POST", JOB + "/terminate", jobs.terminate_job)
    add("POST", JOB + "/disable", jobs.disable_job)
    add("POST", JOB + "/enable", jobs.enable_job)
    add("GET", JOB + "/taskcounts", jobs.get_job_task_counts)
    add("POST", JOB + "/tasks", tasks.create_task)
    add("GET", JOB + "/tasks", tasks.list_tasks)
    add("POST", JOB + "/addtaskcollection", tasks.create_task_collection)
    add("GET", TASK, tasks.get_task)
    add("PUT", TASK, tasks.replace_task)
    add("DELETE", TASK, tasks.delete_task)
    add("POST", TASK + "/terminate", tasks.terminate_task)
    add("POST", TASK + "/reactivate", tasks.reactivate_task)
    add("GET", TASK + "/subtasksinfo", tasks.list_sub_tasks)
    add("GET", TASK + "/files", files.list_task_files)
    add("GET", TASK + "/files/{filePath}", files.get_task_file)
    add("HEAD", TASK + "/files/{filePath}", files.get_task_file, "get_task_file_properties")
    add("DELETE", TASK + "/files/{filePath}", files.delete_task_file)
    add("POST", "/jobschedules", jobschedules.create_job_schedule)
    add("GET", "/jobschedules", jobschedules.list_job_schedules)
    add("GET", SCHEDULE, jobschedules.get_job_schedule)
    add("HEAD", SCHEDULE, jobschedules.job_schedule_exists)
    add("PATCH", SCHEDULE, jobschedules.update_job_schedule)
    add("PUT", SCHEDULE, jobschedules.replace_job_schedule)
    add("DELETE", SCHEDULE, jobschedules.delete_job_schedule)
    add("POST", SCHEDULE + "/disable", jobschedules.disable_job_schedule)
    add("POST", SCHEDULE + "/enable", jobschedules.enable_job_schedule)
    add("POST", SCHEDULE + "/terminate", jobschedules.terminate_job_schedule)
    add("GET", SCHEDULE + "/jobs", jobschedules.list_jobs_from_schedule)
    add("GET", "/applications", account.list_applications)
    add("GET", "/applications/{applicationId}", account.get_application)
    add("GET", "/poolusagemetrics", account.list_pool_usage_metrics)
    add("GET", JOB + "/jobpreparationandreleasetaskstatus", jobs.list_job_preparation_and_release_task_status)
    for method, template, operation in NOT_EMULATED:
        add(method, template, account.not_emulated(operation), operation)
    return router
