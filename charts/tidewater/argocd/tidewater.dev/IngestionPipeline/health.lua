-- Argo CD health check for tidewater.dev/IngestionPipeline (Lua 5.1, as Argo CD runs it).
-- Degraded:    a Degraded=True condition of the current generation (invalid spec, upgrade
--              rolled back, savepoint failed) or lifecycleState Failed.
-- Progressing: no status yet, a generation the operator has not observed, or any state on
--              the way to Running (Created, Deploying, Upgrading, RollingBack, Deleting).
-- Suspended:   lifecycleState Suspended (spec.state: suspended, stopped with a savepoint).
-- Healthy:     lifecycleState Running with Ready=True.
local hs = {}

local function find(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local generation = obj.metadata and obj.metadata.generation
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile the pipeline"
  return hs
end

local degraded = find(status.conditions, "Degraded")
local current = degraded ~= nil and (degraded.observedGeneration == nil or generation == nil
  or degraded.observedGeneration >= generation)
if degraded ~= nil and degraded.status == "True" and current then
  hs.status = "Degraded"
  hs.message = describe(degraded, "Degraded")
  return hs
end
if status.lifecycleState == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(degraded, "The job failed")
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local state = status.lifecycleState or "Created"
if state == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(find(status.conditions, "Stopped"), "Suspended")
  return hs
end
local ready = find(status.conditions, "Ready")
if state == "Running" and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Running")
  return hs
end
hs.status = "Progressing"
hs.message = state
local progressing = find(status.conditions, "Progressing")
if progressing ~= nil and progressing.message ~= nil and progressing.message ~= "" then
  hs.message = state .. ": " .. progressing.message
elseif ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  hs.message = state .. ": " .. ready.message
end
return hs
