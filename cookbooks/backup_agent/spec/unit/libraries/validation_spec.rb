require_relative '../../spec_helper'

describe BackupAgentCookbook::Validation do
  let(:defaults) { BackupAgentSpec.default_attributes }

  def errors_for(&change)
    attrs = Marshal.load(Marshal.dump(defaults))
    change.call(attrs)
    described_class.attribute_errors(attrs)
  end

  it "accepts schedule 'continuous' (live mirroring of a files job)" do
    expect(errors_for { |a| a['jobs'] = { 'live' => { 'type' => 'files', 'paths' => ['/srv'], 'schedule' => ' Continuous ' } } })
      .to eq([])
    expect(described_class.schedule_period('continuous utc')).to be_nil
  end

  it 'finds nothing wrong with the defaults or with the repository\'s environments' do
    expect(described_class.attribute_errors(defaults)).to eq([])
    %w(production staging development).each do |env|
      attrs = defaults.merge('jobs' => BackupAgentSpec.environment_jobs(env))
      expect(described_class.attribute_errors(attrs)).to eq([])
    end
  end

  # One bad input each: the message names the attribute and says what is wrong.
  {
    'extras as a string' => [->(a) { a['install']['extras'] = 'chunking' },
                             "node['backup_agent']['install']['extras']: must be a list of the agent's extra names " \
                             '(e.g. ["chunking"], or []), got the string "chunking"'],
    'an extra that is no name' => [->(a) { a['install']['extras'] = ['chunking; rm -rf /'] },
                                   /\['install'\]\['extras'\]: must be a list of the agent's extra names/],
    'jobs as a list' => [->(a) { a['jobs'] = %w(etc) },
                         "node['backup_agent']['jobs']: must be a map keyed by job name, got a list"],
    'a job that is a string' => [->(a) { a['jobs'] = { 'etc' => 'daily' } },
                                 "node['backup_agent']['jobs']['etc']: must be a map of the job's keys, got the string \"daily\""],
    'an unknown job type' => [->(a) { a['jobs'] = { 'etc' => { 'type' => 'tarball' } } },
                              "node['backup_agent']['jobs']['etc']['type']: \"tarball\" is not a job type (use files, command, ebs_snapshot)"],
    'an invalid schedule' => [->(a) { a['jobs'] = { 'etc' => { 'type' => 'files', 'schedule' => 'daly at 02:00' } } },
                              "node['backup_agent']['jobs']['etc']['schedule']: 'daly at 02:00' is not a schedule: use " \
                              "#{described_class::SCHEDULE_FORMS}"],
    'a schedule out of range' => [->(a) { a['jobs'] = { 'etc' => { 'type' => 'files', 'schedule' => 'daily at 25:00' } } },
                                  /\['etc'\]\['schedule'\]: 'daily at 25:00' is not a schedule/],
    'a schedule that is a number' => [->(a) { a['jobs'] = { 'etc' => { 'type' => 'files', 'schedule' => 6 } } },
                                      "node['backup_agent']['jobs']['etc']['schedule']: must be a string, got integer 6"],
    'a negative retention' => [->(a) { a['jobs'] = { 'etc' => { 'type' => 'files', 'retention' => { 'keep_daily' => -1 } } } },
                               "node['backup_agent']['jobs']['etc']['retention']: keep_daily must be an integer >= 0, got integer -1"],
    'retention as a string' => [->(a) { a['jobs'] = { 'etc' => { 'type' => 'files', 'retention' => { 'keep_daily' => '7' } } } },
                                "node['backup_agent']['jobs']['etc']['retention']: keep_daily must be an integer >= 0, got the string \"7\""],
    'an unknown retention key' => [->(a) { a['jobs'] = { 'etc' => { 'type' => 'files', 'retention' => { 'keep_days' => 7 } } } },
                                   /\['retention'\]: unknown key 'keep_days'/],
    'a drill with a bad schedule' => [->(a) { a['jobs'] = { 'etc' => { 'type' => 'files', 'drill' => { 'schedule' => 'now and then' } } } },
                                      /\['drill'\]: schedule 'now and then' is not a schedule/],
    'a drill of zero files' => [->(a) { a['jobs'] = { 'etc' => { 'type' => 'files', 'drill' => { 'sample_files' => 0 } } } },
                                "node['backup_agent']['jobs']['etc']['drill']: sample_files must be an integer >= 1, got integer 0"],
    'a bad job name' => [->(a) { a['jobs'] = { 'my job' => { 'type' => 'files' } } },
                         "node['backup_agent']['jobs']['my job']: 'my job' is not a job name (letters, digits, '_', '.', '-')"],
    'a password in attributes' => [->(a) { a['jobs'] = { 'pg' => { 'type' => 'command', 'password' => 'hunter2' } } },
                                   "node['backup_agent']['jobs']['pg']['password']: is a secret: put it in the encrypted data bag item " \
                                   'as job_secrets.pg.password, never in an attribute'],
    'a database password in a job\'s env' => [->(a) { a['jobs'] = { 'pg' => { 'type' => 'command', 'env' => { 'PGPASSWORD' => 'x' } } } },
                                              "node['backup_agent']['jobs']['pg']['env']['PGPASSWORD']: looks like a secret (its name): " \
                                              'put it in the encrypted data bag item as job_secrets.pg.env.PGPASSWORD, never in an attribute'],
    'MYSQL_PWD in a job\'s env' => [->(a) { a['jobs'] = { 'my' => { 'type' => 'command', 'env' => { 'MYSQL_PWD' => 'x', 'TZ' => 'UTC' } } } },
                                    /\['env'\]\['MYSQL_PWD'\]: looks like a secret/],
    'a healthchecks URL in attributes' => [->(a) { a['config']['notify']['healthchecks_url'] = 'https://hc.example/ping/uuid' },
                                           "node['backup_agent']['config']['notify']['healthchecks_url']: is a credential (whoever has " \
                                           'it can report as this node): put it in the encrypted data bag item as notify.healthchecks_url, ' \
                                           'never in an attribute'],
    'a webhook URL in attributes' => [->(a) { a['config']['notify']['webhook_url'] = 'https://hooks.example/t0ken' },
                                      /\['notify'\]\['webhook_url'\]: is a credential/],
    'credentials in attributes' => [->(a) { a['config']['storage']['secret_access_key'] = 'x' },
                                    "node['backup_agent']['config']['storage']['secret_access_key']: comes from the encrypted " \
                                    "data bag item (key 'secret_access_key'), never from an attribute"],
    'the bucket in attributes' => [->(a) { a['config']['storage']['bucket'] = 'b' },
                                   /\['storage'\]\['bucket'\]: comes from the encrypted data bag item/],
    'splay as a string' => [->(a) { a['config']['splay'] = '5m' },
                            "node['backup_agent']['config']['splay']: must be an integer >= 0, got the string \"5m\""],
    'a relative state_dir' => [->(a) { a['config']['state_dir'] = 'var/lib' },
                               "node['backup_agent']['config']['state_dir']: must be an absolute path, got \"var/lib\""],
    'jobs under config' => [->(a) { a['config']['jobs'] = {} },
                            "node['backup_agent']['config']['jobs']: jobs are node['backup_agent']['jobs'], not a config setting"],
    'a relative bin_link' => [->(a) { a['install']['bin_link'] = 'bin/backup-agent' },
                              "node['backup_agent']['install']['bin_link']: must be an absolute path, got \"bin/backup-agent\""],
    'find_links as a string' => [->(a) { a['install']['find_links'] = '/srv/wheels' },
                                 "node['backup_agent']['install']['find_links']: must be a list of strings, got the string \"/srv/wheels\""],
    'a version that is a number' => [->(a) { a['install']['version'] = 1.0 },
                                     "node['backup_agent']['install']['version']: must be a non-empty string, got float 1.0"],
    'no_index as a string' => [->(a) { a['install']['no_index'] = 'yes' },
                               "node['backup_agent']['install']['no_index']: must be true or false, got the string \"yes\""],
    'an unknown service manager' => [->(a) { a['service']['manager'] = 'upstart' },
                                     "node['backup_agent']['service']['manager']: \"upstart\" is not one of auto, systemd, none"],
    'unit_when_unmanaged as a string' => [->(a) { a['service']['unit_when_unmanaged'] = 'no' },
                                          "node['backup_agent']['service']['unit_when_unmanaged']: must be true or false, got the string \"no\""],
    'a reload_command that is a map' => [->(a) { a['service']['reload_command'] = { 'cmd' => 'x' } },
                                         /\['reload_command'\]: must be a command \(a string or a list of strings\), got a map/],
    'config that is not a map' => [->(a) { a['config'] = 'INFO' },
                                   "node['backup_agent']['config']: must be a map, got the string \"INFO\""],
  }.each do |what, (change, message)|
    it "reports #{what}" do
      errors = errors_for(&change)
      expect(errors.size).to eq(1), errors.inspect
      message.is_a?(Regexp) ? expect(errors.first).to(match(message)) : expect(errors.first).to(eq(message))
    end
  end

  it 'accepts a job without a type: a backup_agent_job resource may supply it' do
    expect(errors_for { |a| a['jobs'] = { 'pg' => { 'schedule' => 'every 6 hours' } } }).to eq([])
  end

  it 'reports every problem at once, one line each, and says nothing was changed' do
    attrs = Marshal.load(Marshal.dump(defaults))
    attrs['jobs'] = { 'etc' => { 'type' => 'tarball', 'schedule' => 'sometimes' }, 'pg' => { 'type' => 'command', 'password' => 'p' } }
    expect { described_class.check_attributes!(attrs) }.to raise_error(BackupAgentCookbook::ConfigError) { |error|
      lines = error.message.lines.map(&:strip)
      expect(lines.first).to eq('backup_agent: 3 invalid attributes, nothing was changed:')
      expect(lines.drop(1)).to all(start_with("node['backup_agent']['jobs']"))
      expect(error.message).not_to include("'p'")
    }
  end

  describe '.schedule?' do
    good = ['every 6 hours', 'every 1 hour', 'every 30 minutes', 'every 10 seconds', 'every 2 days', 'hourly at :15',
            'daily at 02:00', 'daily at 23:59', 'weekly on sunday at 03:30', 'Daily at 02:00 UTC', 'every  6   hours']
    bad = ['daly at 02:00', 'daily at 24:00', 'daily at 2:00', 'hourly at 15', 'every 0 hours', 'every hours',
           'weekly on someday at 01:00', 'at 02:00', '', 'daily at 02:00 CET', 'every 6 weeks']

    good.each { |text| it("accepts #{text.inspect}") { expect(described_class.schedule?(text)).to be true } }
    bad.each { |text| it("refuses #{text.inspect}") { expect(described_class.schedule?(text)).to be false } }

    # The grammar is the agent's (schedules.py): the two must agree on every sample.
    it 'agrees with the agent\'s own parser' do
      python = File.join(BackupAgentSpec::REPO, '.venv', 'bin', 'python')
      skip 'no agent venv (make venv)' unless File.executable?(python)
      script = 'import json, sys; from backup_agent.schedules import parse_schedule, ScheduleError' \
               "\ndef ok(t):\n    try:\n        parse_schedule(t); return True\n    except ScheduleError:\n        return False" \
               "\nprint(json.dumps([ok(t) for t in json.load(sys.stdin)]))"
      out, status = Open3.capture2(python, '-c', script, stdin_data: JSON.generate(good + bad))
      expect(status).to be_success
      expect(JSON.parse(out)).to eq((good + bad).map { |text| described_class.schedule?(text) })
    end
  end
end

# The same cases the agent's pytest runs (agent/tests/test_schedule_cases.py): one grammar and one
# job-name rule on both sides.
describe 'the shared schedule and job-name cases' do
  cases = JSON.parse(File.read(File.expand_path('../../../../../tests/fixtures/schedule_cases.json', __dir__)))

  it 'reads every schedule string as the agent does' do
    cases['schedules'].each do |c|
      expect([c['text'], BackupAgentCookbook::Validation.schedule_period(c['text'])]).to eq([c['text'], c['period']])
      expect(BackupAgentCookbook::Validation.schedule?(c['text'])).to eq(!c['period'].nil?)
    end
  end

  it 'accepts exactly the job names the agent accepts' do
    cases['job_names'].each do |c|
      expect([c['name'], BackupAgentCookbook::Validation::JOB_NAME.match?(c['name'])]).to eq([c['name'], c['valid']])
    end
  end
end
