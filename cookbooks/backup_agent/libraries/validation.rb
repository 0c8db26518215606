#
# Cookbook:: backup_agent
# Library:: validation
#
# Checks of node['backup_agent'] that run at compile time, before any resource changes the node,
# and report every problem at once, one line each, named by its attribute path.
#
# They cover what only the cookbook knows (install/service/data bag settings, secrets that must
# not be attributes) and the mistakes that are easy to make in an environment's JSON (a job that
# is not a map, an unknown job type, a schedule or retention the agent cannot read). Everything
# else about a job (which keys a type takes, their types and ranges) is the agent's schema:
# `backup-agent validate` checks the rendered file before it replaces the old one, so the two
# never disagree about what a valid config is.

require_relative 'secret_keys'

module BackupAgentCookbook
  class ConfigError < StandardError; end

  module Validation
    JOB_TYPES = %w(files command ebs_snapshot).freeze
    # The agent's job name pattern (config_schema.py, jobs.propertyNames).
    JOB_NAME = /\A[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\z/.freeze
    RETENTION_KEYS = %w(keep_last keep_hourly keep_daily keep_weekly keep_monthly keep_yearly).freeze
    WEEKDAYS = %w(monday tuesday wednesday thursday friday saturday sunday).freeze

    # The schedule strings of docs/CONTRACT.md, read exactly as the agent's schedules.py reads them
    # (tests/fixtures/schedule_cases.json holds the cases both sides run): ASCII only, case and
    # runs of spaces or tabs do not matter, a trailing ' UTC' means UTC instead of local time.
    UNIT_SECONDS = { 'second' => 1, 'minute' => 60, 'hour' => 3600, 'day' => 86_400 }.freeze
    MAX_PERIOD = 366 * 86_400 # longer periods are typos (and the agent refuses them)
    EVERY = /\Aevery ([1-9][0-9]{0,8}) (second|minute|hour|day)s?\z/.freeze
    SCHEDULES = {
      /\Ahourly at :[0-5][0-9]\z/ => 3600,
      /\Adaily at ([01][0-9]|2[0-3]):[0-5][0-9]\z/ => 86_400,
      /\Aweekly on (#{WEEKDAYS.join('|')}) at ([01][0-9]|2[0-3]):[0-5][0-9]\z/ => 7 * 86_400,
    }.freeze
    SCHEDULE_FORMS = "'every N seconds|minutes|hours|days', 'hourly at :MM', 'daily at HH:MM' or " \
                     "'weekly on <weekday> at HH:MM', optionally followed by ' UTC'; or 'continuous' " \
                     '(files jobs: a snapshot after changes)'.freeze
    # `schedule: continuous` (live mirroring): not a time; the agent's Schedule.period_seconds
    # counts it as 60 s, and checks that the job is a files job.
    CONTINUOUS = 'continuous'.freeze

    # Keys that come from the secret store and never from attributes (libraries/secret_keys.rb).
    STORAGE_SECRET_KEYS = SecretKeys::STORAGE
    # A job's keys in the config that only job_secrets.<job> of the item sets (password, secret_env).
    JOB_SECRET_KEYS = SecretKeys::JOB.values.freeze
    NOTIFY_SECRET_KEYS = SecretKeys::NOTIFY_KEYS
    # Environment variable names taken for secrets (PGPASSWORD, MYSQL_PWD, API_TOKEN, ...): their
    # values belong in job_secrets.<job>.env of the data bag item.
    SECRET_ENV_NAME = /PASS|PWD|SECRET|TOKEN|KEY|CREDENTIAL|AUTH|PRIVATE|SESSION/i.freeze

    # An extra of the agent (pyproject's optional-dependencies), also part of a lock's file name.
    EXTRA_NAME = /\A[a-z0-9][a-z0-9_-]*\z/.freeze
    SERVICE_MANAGERS = %w(auto systemd none).freeze
    # Where the secrets come from: an encrypted data bag item, a chef-vault item, or a secret
    # service through Chef's `secret` helper.
    SECRET_SOURCES = %w(data_bag chef_vault secret).freeze
    STORAGE_CLASSES = %w(STANDARD STANDARD_IA GLACIER_IR GLACIER DEEP_ARCHIVE).freeze

    # Property callbacks of backup_agent_job: {message => check}, as Chef's `callbacks:` wants.
    CALLBACKS = {
      schedule: { "must be #{SCHEDULE_FORMS}" => ->(v) { schedule?(v) } },
      retention: { "must map #{RETENTION_KEYS.join('/')} to integers >= 0" => ->(v) { retention_error(v).nil? } },
      drill: { 'must be {schedule => a schedule, sample_files => an integer >= 1}' => ->(v) { drill_error(v).nil? } },
      splay: { 'must be 0..86400 (seconds)' => ->(v) { v.is_a?(Integer) && v.between?(0, 86_400) } },
      argv: { 'must be a non-empty list of strings' => ->(v) { v.is_a?(Array) && !v.empty? && v.all?(String) } },
      strings: { 'must be a list of strings' => ->(v) { v.is_a?(Array) && v.all?(String) } },
      string_map: { 'must map strings to strings' => ->(v) { v.is_a?(Hash) && v.all? { |key, s| key.is_a?(String) && s.is_a?(String) } } },
      absolute_paths: { 'must be a non-empty list of absolute paths' => ->(v) { v.is_a?(Array) && !v.empty? && v.all? { |p| p.is_a?(String) && p.start_with?('/') } } },
      volumes: { "must be 'all' or a list of volume ids and devices" => ->(v) { v == 'all' || (v.is_a?(Array) && !v.empty? && v.all?(String)) } },
    }.freeze

    module_function

    # Seconds between runs of a schedule string, or nil when it is not one.
    def schedule_period(text)
      return unless text.is_a?(String) && text.ascii_only?
      body = text.gsub(/\A[ \t]+|[ \t]+\z/, '').split(/[ \t]+/).join(' ').downcase
      return 60 if body == CONTINUOUS
      body = body.delete_suffix(' utc')
      if (m = EVERY.match(body))
        period = m[1].to_i * UNIT_SECONDS[m[2]]
        return period <= MAX_PERIOD ? period : nil
      end
      SCHEDULES.find { |form, _| form.match?(body) }&.last
    end

    def schedule?(text)
      !schedule_period(text).nil?
    end

    def schedule_error(text)
      return "must be a string, got #{describe(text)}" unless text.is_a?(String)
      return if schedule?(text)
      "'#{text}' is not a schedule: use #{SCHEDULE_FORMS}"
    end

    # A job's restore drills (`backup-agent drill`): when the daemon runs them, how many files.
    def drill_error(value)
      return "must be a map of schedule, sample_files, got #{describe(value)}" unless value.is_a?(Hash)
      value.each do |key, v|
        case key.to_s
        when 'schedule' then (message = schedule_error(v)) && (return "schedule #{message}")
        when 'sample_files' then return "sample_files must be an integer >= 1, got #{describe(v)}" unless v.is_a?(Integer) && v >= 1
        else return "unknown key '#{key}' (use schedule, sample_files)"
        end
      end
      nil
    end

    def retention_error(value)
      return "must be a map of #{RETENTION_KEYS.join(', ')}, got #{describe(value)}" unless value.is_a?(Hash)
      value.each do |key, count|
        return "unknown key '#{key}' (use #{RETENTION_KEYS.join(', ')})" unless RETENTION_KEYS.include?(key.to_s)
        next if count.nil?
        return "#{key} must be an integer >= 0, got #{describe(count)}" unless count.is_a?(Integer) && count >= 0
      end
      nil
    end

    # Problems of one job's definition, as [key, message] pairs. `complete` is for the final,
    # merged job (a job's type may come from a backup_agent_job resource declared later, so the
    # attributes alone need not name it).
    def job_errors(job, complete: false)
      return [[nil, "must be a map of the job's keys, got #{describe(job)}"]] unless job.is_a?(Hash)

      errors = []
      type = job['type']
      if type.nil?
        errors << ['type', "missing: one of #{JOB_TYPES.join(', ')}"] if complete
      elsif !JOB_TYPES.include?(type)
        errors << ['type', "#{type.inspect} is not a job type (use #{JOB_TYPES.join(', ')})"]
      end
      if job.key?('schedule') && !job['schedule'].nil?
        message = schedule_error(job['schedule'])
        errors << ['schedule', message] if message
      end
      if job.key?('retention') && !job['retention'].nil?
        message = retention_error(job['retention'])
        errors << ['retention', message] if message
      end
      if job.key?('drill') && !job['drill'].nil?
        message = drill_error(job['drill'])
        errors << ['drill', message] if message
      end
      errors
    end

    # Every problem of node['backup_agent'] (a plain Hash), as full one-line messages.
    def attribute_errors(attrs)
      errors = []
      add = ->(path, message) { errors << "node['backup_agent']#{path.map { |p| "['#{p}']" }.join}: #{message}" }

      install = section(attrs, 'install', add)
      if install
        string(install, 'install', 'version', add, required: true)
        string(install, 'install', 'dir', add, required: true, absolute: true)
        string(install, 'install', 'python', add, required: true, absolute: true)
        string(install, 'install', 'bin_link', add, absolute: true) unless install['bin_link'] == false
        string(install, 'install', 'index_url', add)
        string(install, 'install', 'lock_file', add, absolute: true)
        string_list(install, 'install', 'find_links', add)
        string_list(install, 'install', 'pip_extra_args', add)
        string_list(install, 'install', 'packages', add)
        extras = install['extras']
        unless extras.nil? || (extras.is_a?(Array) && extras.all? { |extra| extra.is_a?(String) && EXTRA_NAME.match?(extra) })
          add.call(%w(install extras), "must be a list of the agent's extra names (e.g. [\"chunking\"], or []), got #{describe(extras)}")
        end
        boolean(install, 'install', 'no_index', add)
      end

      string(attrs, nil, 'config_path', add, required: true, absolute: true)
      config = section(attrs, 'config', add)
      if config
        storage = config['storage']
        if storage.is_a?(Hash)
          item_keys = STORAGE_SECRET_KEYS.to_h { |key| [key, key] }
          item_keys.merge!(SecretKeys::STORAGE_CONFIG_KEY.invert)
          (storage.keys & item_keys.keys).each do |key|
            add.call(['config', 'storage', key], "comes from the encrypted data bag item (key '#{item_keys[key]}'), " \
                                                 'never from an attribute')
          end
        elsif !storage.nil?
          add.call(%w(config storage), "must be a map, got #{describe(storage)}")
        end
        add.call(%w(config jobs), "jobs are node['backup_agent']['jobs'], not a config setting") if config.key?('jobs')
        notify = config['notify']
        if notify.is_a?(Hash)
          NOTIFY_SECRET_KEYS.each do |key|
            next if notify[key].nil?
            add.call(['config', 'notify', key], 'is a credential (whoever has it can report as this node): put it in ' \
                                                "the encrypted data bag item as notify.#{key}, never in an attribute")
          end
        end
        %w(splay max_parallel_jobs).each do |key|
          value = config[key]
          next if value.nil? || (value.is_a?(Integer) && value >= 0)
          add.call(['config', key], "must be an integer >= 0, got #{describe(value)}")
        end
        string(config, 'config', 'state_dir', add, absolute: true)
      end

      service = section(attrs, 'service', add)
      if service
        unless SERVICE_MANAGERS.include?(service['manager'])
          add.call(%w(service manager), "#{service['manager'].inspect} is not one of #{SERVICE_MANAGERS.join(', ')}")
        end
        boolean(service, 'service', 'enabled', add)
        boolean(service, 'service', 'reload_unmanaged', add)
        boolean(service, 'service', 'unit_when_unmanaged', add)
        %w(reload_command restart_command).each do |key|
          value = service[key]
          next if value.nil? || value.is_a?(String) || (value.is_a?(Array) && !value.empty? && value.all?(String))
          add.call(['service', key], "must be a command (a string or a list of strings), got #{describe(value)}")
        end
      end

      data_bag = section(attrs, 'data_bag', add)
      string(data_bag, 'data_bag', 'name', add, required: true) if data_bag

      store = section(attrs, 'secrets', add)
      if store
        unless SECRET_SOURCES.include?(store['source'])
          add.call(%w(secrets source), "#{store['source'].inspect} is not one of #{SECRET_SOURCES.join(', ')}")
        end
        if store['source'] == 'secret'
          string(store, 'secrets', 'secret_name', add, required: true)
          string(store, 'secrets', 'secret_service', add, required: true)
          add.call(%w(secrets secret_config), "must be a map, got #{describe(store['secret_config'])}") unless store['secret_config'].nil? || store['secret_config'].is_a?(Hash)
        end
      end

      jobs = attrs['jobs']
      if jobs.is_a?(Hash)
        jobs.each do |name, job|
          next if job.nil? # how a higher precedence level removes a job
          add.call(['jobs', name], "'#{name}' is not a job name (letters, digits, '_', '.', '-')") unless JOB_NAME.match?(name)
          job_errors(job).each { |key, message| add.call(['jobs', name, key].compact, message) }
          next unless job.is_a?(Hash)
          (job.keys & JOB_SECRET_KEYS).each do |key|
            item_key = SecretKeys::JOB.key(key)
            add.call(['jobs', name, key], 'is a secret: put it in the encrypted data bag item as ' \
                                          "job_secrets.#{name}.#{item_key}, never in an attribute")
          end
          next unless job['env'].is_a?(Hash)
          job['env'].each do |var, value|
            next if value.nil? || !SECRET_ENV_NAME.match?(var.to_s)
            add.call(['jobs', name, 'env', var], 'looks like a secret (its name): put it in the encrypted data bag item ' \
                                                 "as job_secrets.#{name}.env.#{var}, never in an attribute")
          end
        end
      elsif !jobs.nil?
        add.call(['jobs'], "must be a map keyed by job name, got #{describe(jobs)}")
      end
      errors
    end

    def check_attributes!(attrs)
      errors = attribute_errors(attrs)
      return if errors.empty?
      raise ConfigError, "backup_agent: #{errors.size == 1 ? 'an invalid attribute' : "#{errors.size} invalid attributes"}, " \
                         "nothing was changed:\n  #{errors.join("\n  ")}"
    end

    # --- small typed checks ---

    def section(attrs, key, add)
      value = attrs[key]
      return value if value.is_a?(Hash)
      add.call([key], "must be a map, got #{describe(value)}")
      nil
    end

    def string(hash, section, key, add, required: false, absolute: false)
      value = hash[key]
      path = [section, key].compact
      if value.nil?
        add.call(path, 'must be set') if required
      elsif !value.is_a?(String) || value.empty?
        add.call(path, "must be a non-empty string, got #{describe(value)}")
      elsif absolute && !value.start_with?('/')
        add.call(path, "must be an absolute path, got #{value.inspect}")
      end
    end

    def string_list(hash, section, key, add)
      value = hash[key]
      return if value.nil? || (value.is_a?(Array) && value.all?(String))
      add.call([section, key], "must be a list of strings, got #{describe(value)}")
    end

    def boolean(hash, section, key, add)
      value = hash[key]
      return if value.nil? || value == true || value == false
      add.call([section, key], "must be true or false, got #{describe(value)}")
    end

    def describe(value)
      case value
      when nil then 'nothing'
      when Hash then 'a map'
      when Array then 'a list'
      when String then "the string #{value.inspect}"
      else "#{value.class.name.downcase} #{value.inspect}"
      end
    end
  end
end
